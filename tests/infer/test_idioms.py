"""Idioms of users' programs that the core either handles or refuses with the idiom named
(each found by trying the library as a new user would)."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.bounds import elbo, iwae, log_marginal
from pyro_vae.comparison import compare
from pyro_vae.errors import InputError
from pyro_vae.train import fit

X = torch.randn(30, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _guide(x, *args, **kwargs):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 0.7).to_event(1))


def _exact(x):
    """z ~ N(0, I), x ~ N(z, I): log p(x) = N(x; 0, 2 I)."""
    return dist.Normal(0.0, 2**0.5).log_prob(x).sum(-1)


def test_deterministic_sites_are_values_not_densities():
    def model(x):
        shift = pyro.param("shift", torch.zeros((), dtype=x.dtype))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x) + 0 * shift, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)
            pyro.deterministic("norm", z.norm(dim=-1))
        pyro.deterministic("total", z.sum())

    bound = log_marginal(model, _guide, X, num_particles=3000)
    assert ((bound.value - _exact(X)).abs() < 4 * bound.standard_error + 0.01).all()
    assert fit(model, _guide, X, epochs=1, batch_size=10, progress=False).scaling == ("rescaled",)


def test_a_global_factor_is_named_by_the_bounds_and_trained_by_fit():
    def model(x):
        b = pyro.param("b", torch.zeros(3, dtype=x.dtype))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + b, 1.0).to_event(1), obs=x)
        pyro.factor("ridge", -(b**2).sum())

    with pytest.raises(InputError, match=r"\['ridge'\] are outside the data plate"):
        elbo(model, _guide, X)
    res = fit(model, _guide, X, epochs=1, batch_size=10, progress=False)
    assert res.scaling == ("rescaled",) and "ridge" in res.metrics


def test_per_row_keyword_tensors_are_chunked_like_positional_ones():
    y = torch.randn(30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def model(x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + y.unsqueeze(-1), 1.0).to_event(1), obs=x)

    pyro.set_rng_seed(3)
    positional = iwae(model, _guide, X, y, num_particles=20, data_chunk=7)
    pyro.set_rng_seed(3)
    keyword = iwae(model, _guide, X, y=y, num_particles=20, data_chunk=7)
    torch.testing.assert_close(positional, keyword)


def test_data_bound_with_pyro_condition_is_refused_when_chunked():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1))

    conditioned = pyro.condition(model, data={"x": X})
    assert elbo(conditioned, _guide, X).shape == (30,)
    with pytest.raises(InputError, match=r"pyro.condition\) cannot be split into chunks"):
        elbo(conditioned, _guide, X, data_chunk=10)


def test_an_iterated_or_self_subsampling_data_plate_is_named():
    def iterated(x):
        for i in pyro.plate("data", len(x)):
            z = pyro.sample(f"z_{i}", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample(f"x_{i}", dist.Normal(z, 1.0).to_event(1), obs=x[i])

    def iterated_guide(x):
        for i in pyro.plate("data", len(x)):
            pyro.sample(f"z_{i}", dist.Normal(x[i] / 2, 0.7).to_event(1))

    with pytest.raises(InputError, match="must be vectorized"):
        elbo(iterated, iterated_guide, X)

    def subsampled(x):
        with pyro.plate("data", len(x), subsample_size=5) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(5, 3, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x[idx])

    def subsampled_guide(x):
        with pyro.plate("data", len(x), subsample_size=5) as idx:
            pyro.sample("z", dist.Normal(x[idx] / 2, 0.7).to_event(1))

    with pytest.raises(InputError, match="subsamples the data itself"):
        elbo(subsampled, subsampled_guide, X)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: elbo(m, _guide, torch.where(torch.arange(30)[:, None] == 4, float("nan"), X)), r"\(row 4"),
        (lambda m: elbo(m, _guide, X[:0]), "empty"),
        (lambda m: iwae(m, _guide, X, num_particles=0), "num_particles"),
        (lambda m: compare(m, _guide, X, ["score"], epoch=1), r"unknown options \['epoch'\]"),
    ],
)
def test_bad_input_is_named_before_work(call, message):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    with pytest.raises(InputError, match=message):
        call(model)


def _normal_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def test_an_autonormal_guide_is_never_split_into_chunks():
    """AutoNormal has one location per datapoint; set to the exact posterior N(x/2, 1/2), every
    importance weight is p(x), and the default log_marginal (whose K=5000 would chunk 50 rows
    into 10s) evaluates all rows at once."""
    from pyro.infer.autoguide import AutoNormal

    guide = AutoNormal(_normal_model)
    guide(X)
    guide.locs.z = torch.nn.Parameter(X / 2)
    guide.scales.z = torch.full_like(X, 0.5**0.5)
    bound = log_marginal(_normal_model, guide, X)
    torch.testing.assert_close(bound.value, _exact(X))
    with pytest.raises(InputError, match="parameters per datapoint .*cannot be split into chunks of 7"):
        iwae(_normal_model, guide, X, num_particles=3, data_chunk=7)


def test_autonormal_trains_full_batch_and_is_refused_minibatches():
    """Full batch keeps the rows in place, so each row's parameters learn that row's posterior
    (mean x/2 here; reshuffled rows gave locations unrelated to their rows, max error 2.1);
    minibatches would share them across rows and are refused."""
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    guide = AutoNormal(_normal_model)
    res = fit(
        _normal_model, guide, X, loss=Trace_ELBO(), epochs=400, batch_size=None, lr=0.05, progress=False
    )
    with pyro.get_param_store().scope(res.param_state):
        loc = pyro.param("AutoNormal.locs.z").detach()
    corr = torch.corrcoef(torch.stack([loc.flatten(), X.flatten() / 2]))[0, 1]
    assert corr > 0.95, corr  # rows shuffled under their parameters would give about 0
    with pytest.raises(InputError, match="parameters per datapoint .*AutoNormal.locs.z"):
        fit(_normal_model, AutoNormal(_normal_model), X, loss=Trace_ELBO(), batch_size=10, progress=False)
