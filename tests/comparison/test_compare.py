import csv
import json

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.comparison import COLUMNS, compare
from pyro_vae.errors import InputError
from pyro_vae.estimators.registry import get_estimator
from pyro_vae.estimators.relaxed import TemperatureSchedule
from tests.estimators.conftest import tiny_data, tiny_vae

_GEN = torch.Generator().manual_seed(0)
_INIT = {
    "w": 0.5 * torch.randn(3, 6, generator=_GEN, dtype=torch.float64),
    "a": 0.5 * torch.randn(6, 3, generator=_GEN, dtype=torch.float64),
}


def user_model(x):
    """A user's own sigmoid belief net, written with bare pyro.param (no pyro_vae classes)."""
    w = pyro.param("w", _INIT["w"].clone())
    b = pyro.param("b", torch.zeros(6, dtype=x.dtype))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(torch.full((3,), 0.5, dtype=x.dtype)).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=z @ w + b).to_event(1), obs=x)


def user_guide(x):
    a = pyro.param("a", _INIT["a"].clone())
    c = pyro.param("c", torch.zeros(3, dtype=x.dtype))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(logits=x @ a + c).to_event(1))


def test_compare_a_users_program_against_exact_gradients(tmp_path):
    x = tiny_data(48, seed=2)
    estimators = ["score", "score-avg", "vimco", get_estimator("gumbel", temperature=1.0), "enum"]
    result = compare(
        user_model,
        user_guide,
        x[:40],
        estimators,
        validation=x[40:],
        num_gradient_samples=400,
        gradient_batch_size=40,
        warmup_steps=20,
        epochs=3,
        batch_size=40,
        eval_particles=10,
        progress=False,
    )
    assert len(pyro.get_param_store()) == 0  # nothing leaked into the global store
    assert result.exact == "exact gradients by enumeration"
    rows = {(r["estimator"], r["group"]): r for r in result.rows()}
    assert set(rows) == {
        (e, g) for e in ("score", "score-avg", "vimco", "gumbel", "enum") for g in ("guide", "model")
    }
    for group in ("guide", "model"):
        assert rows["enum", group]["bias"] < 1e-9 and rows["enum", group]["variance"] < 1e-18
        for name in ("score", "score-avg", "vimco"):  # unbiased: E||mean - g||^2 = tr Cov / S = bias_se^2
            assert rows[name, group]["bias"] < 3 * rows[name, group]["bias_se"], rows[name, group]
    # the harness sees the Gumbel-softmax bias at temperature 1
    assert rows["gumbel", "model"]["bias"] > 5 * rows["gumbel", "model"]["bias_se"]
    assert rows["score-avg", "guide"]["variance"] < rows["score", "guide"]["variance"]
    assert rows["vimco", "guide"]["objective"] == "L_5"
    for r in result.results:
        assert len(r.history) == 3 and r.val_iwae >= r.val_elbo - 3 * r.val_elbo_se and r.ms_per_step > 0
        assert set(r.params) == {"w", "b", "a", "c"}

    paths = result.save(tmp_path)
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS and len(table) == 10
    saved = json.loads(paths["json"].read_text())
    assert set(saved["histories"]) == {"score", "score-avg", "vimco", "gumbel", "enum"}
    assert paths["variance"].stat().st_size > 0 and paths["curves"].stat().st_size > 0
    assert "bias" in result.format()


def test_compare_restores_the_models_parameters_and_the_global_rng():
    vae, x = tiny_vae(), tiny_data(30)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    result = compare(
        vae.model,
        vae.guide,
        x,
        ["score", "nvil", "st-gumbel"],
        num_gradient_samples=5,
        warmup_steps=3,
        epochs=2,
        batch_size=30,
        progress=False,
    )
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    trained = result.results[0].params["dvae_encoder$$$0.weight"]
    assert not torch.equal(trained, before["encoder.0.weight"])  # the result holds the trained values
    assert result.exact == "exact gradients by enumeration"


def test_same_seed_same_comparison():
    vae, x = tiny_vae(), tiny_data(20)
    kwargs = dict(num_gradient_samples=4, warmup_steps=2, epochs=1, batch_size=20, progress=False)
    a = compare(vae.model, vae.guide, x, ["score", "vimco"], **kwargs)
    b = compare(vae.model, vae.guide, x, ["score", "vimco"], **kwargs)
    for ra, rb in zip(a.rows(), b.rows(), strict=True):
        assert ra["variance"] == rb["variance"] and ra["bias"] == rb["bias"]


def test_bad_estimators_are_refused():
    vae, x = tiny_vae(), tiny_data()
    with pytest.raises(InputError, match="unknown estimator 'reinforce'"):
        compare(vae.model, vae.guide, x, ["reinforce"], progress=False)
    with pytest.raises(InputError, match="distinct"):
        compare(vae.model, vae.guide, x, ["score", "score"], progress=False)
    with pytest.raises(InputError, match="at least one"):
        compare(vae.model, vae.guide, x, [], progress=False)
    with pytest.raises(InputError, match="vimco needs"):
        get_estimator("vimco", num_particles=1)


def test_schedule_is_passed_to_relaxed_estimators():
    spec = get_estimator(
        "gumbel", temperature=TemperatureSchedule(initial=2.0, minimum=0.5, rate=0.1, every=1)
    )
    loss = spec.make_loss()
    assert loss.temperature == 2.0 and not spec.unbiased
    assert spec.make_loss() is not loss  # fresh state per use


def test_an_estimator_that_does_not_apply_fails_before_any_work():
    vae, x = tiny_vae("categorical"), tiny_data()
    with pytest.raises(
        InputError, match="estimator 'arm' does not apply to this program: ARM is for Bernoulli"
    ):
        compare(vae.model, vae.guide, x, ["score", "arm"], progress=False)
    assert len(pyro.get_param_store()) == 0


def test_gradients_at_the_trained_parameters(tmp_path):
    x = tiny_data(40, seed=2)
    result = compare(
        user_model,
        user_guide,
        x,
        ["score-avg", "vimco", get_estimator("gumbel", temperature=1.0)],
        num_gradient_samples=400,
        gradient_batch_size=40,
        warmup_steps=20,
        epochs=20,
        batch_size=40,
        trained_gradients=True,
        progress=False,
    )
    rows = {(r["estimator"], r["group"], r["point"]): r for r in result.rows()}
    assert len(rows) == 12
    for name in ("score-avg", "vimco"):
        for group in ("guide", "model"):
            trained = rows[name, group, "trained"]
            assert trained["bias"] < 3 * trained["bias_se"], trained
            assert trained["mean_norm"] != rows[name, group, "initial"]["mean_norm"]
    assert rows["gumbel", "model", "trained"]["bias"] > 5 * rows["gumbel", "model", "trained"]["bias_se"]
    paths = result.save(tmp_path)
    assert paths["variance_trained"].is_file()


class WholeModuleSSVAE(torch.nn.Module):
    """A small semi-supervised VAE written as Pyro's SS-VAE example writes it: the whole
    network registered in the model (``pyro.module("ss_vae", self)``), a discrete label then a
    continuous code in the guide, whose encoder concatenates x with the label (no broadcasting)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_y = torch.nn.Linear(6, 3)
        self.encoder_z = torch.nn.Linear(9, 4)
        self.decoder = torch.nn.Linear(5, 6)
        self.double()

    def model(self, xs):
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            prior = torch.zeros(xs.shape[0], 2, dtype=xs.dtype)
            zs = pyro.sample("z", dist.Normal(prior, 1.0).to_event(1))
            alpha = torch.full((xs.shape[0], 3), 1 / 3, dtype=xs.dtype)
            ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(torch.cat([zs, ys], -1))).to_event(1), obs=xs)

    def guide(self, xs):
        with pyro.plate("data"):
            ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            h = self.encoder_z(torch.cat([xs, ys], -1))
            pyro.sample("z", dist.Normal(h[..., :2], torch.nn.functional.softplus(h[..., 2:])).to_event(1))


def test_compare_never_calls_a_random_reference_exact():
    """Discrete then continuous guide sites: the reference is enumeration of y plus many draws
    of z, labelled a Monte Carlo reference; the enumeration estimator is unbiased against it
    within its standard error (it showed |bias| of 25 SE when one draw of z was called exact);
    groups are split by use, so the encoder registered in the model is in the guide group."""
    torch.manual_seed(0)
    ss = WholeModuleSSVAE()
    x = tiny_data(24, seed=3)
    result = compare(
        ss.model,
        ss.guide,
        x,
        ["enum", "score"],
        num_gradient_samples=200,
        gradient_batch_size=24,
        warmup_steps=0,
        epochs=1,
        batch_size=24,
        eval_particles=5,
        reference_draws=50,
        reference_repeats=10,
        progress=False,
    )
    assert result.exact.startswith("Monte Carlo reference") and "exact" not in result.exact.split(":")[0]
    rows = {(r["estimator"], r["group"]): r for r in result.rows()}
    assert set(rows) == {(e, g) for e in ("enum", "score") for g in ("guide", "model")}
    for name in ("enum", "score"):
        for group in ("guide", "model"):
            assert rows[name, group]["bias"] < 3 * rows[name, group]["bias_se"], rows[name, group]
    assert "Monte Carlo reference" in result.format()


def test_parameter_groups_follow_use_not_registration():
    from pyro_vae.comparison import parameter_groups

    ss = WholeModuleSSVAE()
    x = tiny_data(5, seed=3)
    groups = parameter_groups(ss.model, ss.guide, x)
    assert set(groups["guide"]) == {
        f"ss_vae$$${m}.{p}" for m in ("encoder_y", "encoder_z") for p in ("weight", "bias")
    }
    assert set(groups["model"]) == {"ss_vae$$$decoder.weight", "ss_vae$$$decoder.bias"}


def test_compare_leaves_the_callers_batchnorm_statistics_as_they_were():
    """compare trains each estimator in train mode; the running statistics it changes are put
    back (they moved by 0.32 and counted 109 batches in a trial before), and every estimator
    starts from the same ones."""
    torch.manual_seed(0)
    x = (torch.rand(40, 6) < 0.3).double()
    enc = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3)).double()
    dec = torch.nn.Linear(3, 6).double()

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(torch.full((x.shape[0], 3), 0.5, dtype=x.dtype)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=enc(x)).to_event(1))

    before = {k: v.clone() for k, v in enc.state_dict().items()}
    result = compare(
        model,
        guide,
        x,
        ["score", "enum"],
        num_gradient_samples=3,
        gradient_batch_size=10,
        warmup_steps=0,
        epochs=2,
        batch_size=10,
        eval_particles=2,
        progress=False,
    )
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert enc.training
    assert [r.name for r in result.results] == ["score", "enum"]
