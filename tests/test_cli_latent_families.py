"""pyro-vae train/evaluate with the prior, guide and layer options (tiny settings)."""

import json

import pytest
import torch

from pyro_vae.cli import build_parser, main, train_config
from pyro_vae.commands.configs import GUIDE_NAMES, PRIOR_NAMES, TrainConfig
from pyro_vae.commands.evaluate import format_evaluation, layer_diagnostics
from pyro_vae.commands.train import build_model, read_config
from pyro_vae.data import load_digits
from pyro_vae.errors import InputError
from pyro_vae.guides import IAFPosterior, PlanarPosterior
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE, HierarchicalVAE
from pyro_vae.priors import MixtureOfGaussians, VampPrior

TINY = ["--epochs", "1", "--hidden", "16", "--quiet", "--eval-particles", "2"]
EVALUATE_TINY = ["--ks", "1,10", "--num-points", "30", "--gap-points", "2", "--gap-steps", "3"]
EVALUATE_TINY += ["--elbo-particles", "5", "--quiet"]


def _config(*args):
    return train_config(build_parser().parse_args(["train", *args]))


def test_latent_dim_is_the_one_layer_shorthand_of_layers():
    assert _config().latent_widths == (8,) and _config().layers == ()
    assert _config("--latent-dim", "3").latent_widths == (3,)
    assert _config("--layers", "5").latent_widths == (5,) and _config("--layers", "5").layers == ()
    two = _config("--layers", "6,3")
    assert (two.latent_dim, two.layers, two.latent_widths) == (6, (6, 3), (6, 3))
    assert _config("--latent-dim", "6", "--layers", "6").latent_widths == (6,)
    with pytest.raises(InputError, match="contradicts --layers"):
        _config("--latent-dim", "4", "--layers", "6,3")
    with pytest.raises(InputError, match="--prior-components is for --prior mog or vamp"):
        _config("--prior-components", "3")
    with pytest.raises(InputError, match="--flow-steps is for --guide iaf or planar"):
        _config("--flow-steps", "3")
    assert _config("--prior", "mog", "--prior-components", "3").prior_components == 3
    assert _config("--guide", "iaf", "--flow-steps", "4").flow_steps == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "6,3", "--guide", "iaf"], "for one stochastic layer"),
        (["--layers", "6,3", "--prior", "vamp"], "prior vamp"),
        (["--guide", "planar", "--prior", "vamp"], "prior vamp"),
        (["--layers", "6,0"], "layer width"),
        (["--latent-dim", "2", "--layers", "3,2"], "contradicts"),
        (["--prior", "mog", "--prior-components", "0"], "prior components"),
    ],
)
def test_contradictions_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_old_config_files_without_the_new_fields_still_load(tmp_path):
    old = {k: v for k, v in TrainConfig().to_json().items() if k not in TrainConfig.__dataclass_fields__} | {
        "data": "digits",
        "latent_dim": 4,
        "hidden": [16],
        "pyro_vae_version": "0.1",
    }
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = read_config(tmp_path)
    assert (config.prior, config.guide, config.layers, config.latent_widths) == (
        "standard",
        "gaussian",
        (),
        (4,),
    )
    config.validate()
    assert set(PRIOR_NAMES) == {"standard", "learned", "mog", "vamp"} and "iaf" in GUIDE_NAMES


@pytest.mark.slow
def test_hierarchical_run_reports_kl_and_active_units_per_layer(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--layers", "4,2", "--prior", "learned"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["layers"] == [4, 2] and saved["prior"] == "learned"
    capsys.readouterr()
    assert main(["evaluate", str(out), *EVALUATE_TINY]) == 0
    printed = capsys.readouterr().out
    assert "z1:" in printed and "z2:" in printed and "amortization gap: not computed" in printed
    results = json.loads((out / "evaluation.json").read_text())
    layers = results["layers"]
    assert list(layers) == ["z1", "z2"] and [v["latent_dim"] for v in layers.values()] == [4, 2]
    assert results["latent_dim"] == 6 and len(results["kl_per_dimension"]) == 6
    assert results["active_units"] == sum(v["active_units"] for v in layers.values())
    assert results["elbo"] < results["bounds"][1]["bound"]


@pytest.mark.slow
def test_mixture_prior_with_a_flow_guide_and_the_vamp_prior_train(tmp_path):
    for extra in (
        ["--prior", "mog", "--prior-components", "3", "--guide", "iaf", "--flow-steps", "1"],
        ["--prior", "vamp", "--prior-components", "4"],
    ):
        run = tmp_path / extra[1]
        assert main(["train", "--out", str(run), *TINY, *extra]) == 0
        assert (run / "checkpoint.pt").is_file() and (run / "samples.png").is_file()


def test_build_model_composes_the_named_families():
    data = load_digits(binarize=True).subset(torch.arange(50))
    model = build_model(_config("--prior", "vamp", "--prior-components", "4"), data)
    assert isinstance(model.prior, VampPrior) and model.prior.encoder is model.encoder
    u = model.prior.pseudo_inputs.detach()  # started at training rows
    assert all((data.x == row).all(1).any() for row in u)
    model = build_model(_config("--guide", "planar", "--flow-steps", "3", "--prior", "mog"), data)
    assert isinstance(model.posterior, PlanarPosterior) and model.posterior.num_steps == 3
    assert isinstance(model.prior, MixtureOfGaussians) and model.prior.num_components == 10
    model = build_model(_config("--layers", "5,3,2"), data)
    assert isinstance(model, HierarchicalVAE) and model.latent_dims == (5, 3, 2)


def test_evaluation_says_where_no_kl_is_in_closed_form():
    """A mixture prior and a flow guide: active units from averaged draws, the KL marked."""
    vae = VAE(
        Bernoulli(6), latent_dim=2, hidden=(4,), prior=MixtureOfGaussians(2, 3), posterior=IAFPosterior(2, 4)
    )
    x = (torch.rand(30, 6, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    layers = layer_diagnostics(vae.model, vae.guide, (x,), num_samples=5)
    assert layers["z"]["kl"] is None and "does not split" in layers["z"]["kl_unavailable"]
    assert layers["z"]["latent_dim"] == 2
    results = {"num_points": 30, "elbo": -1.0, "elbo_se": 0.1, "bounds": [], "log_marginal": -1.0}
    results |= {"log_marginal_se": 0.1, "log_marginal_K": 1, "elbo_gap": 0.0, "elbo_gap_se": 0.0}
    results |= {"k_hat": {"k_hat_median": 0.1, "k_hat_max": 0.2, "fraction_k_hat_above_0.7": 0.0}}
    results["k_hat"]["num_particles"] = 10
    results |= {"active_units": layers["z"]["active_units"], "latent_dim": 2, "layers": layers}
    assert "z: " in format_evaluation(results) and "no closed-form KL" in format_evaluation(results)
