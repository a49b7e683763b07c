"""Diagnostics against known answers."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.diagnostics import (
    active_units,
    effective_sample_size,
    importance_diagnostics,
    kl_per_dimension,
    pareto_k_hat,
    posterior_inference_data,
)
from pyro_vae.errors import InputError
from pyro_vae.models import LinearGaussian


@pytest.mark.parametrize("k_true", [0.25, 0.8])
def test_k_hat_recovers_the_tail_index_of_pareto_weights(k_true):
    """log w ~ Exponential(1/k) makes w Pareto with tail index k. Over 40 datapoints of
    4000 weights, the mean k-hat must lie within 4 standard errors (of that mean) of k."""
    gen = torch.Generator().manual_seed(0)
    lw = -torch.log(torch.rand(4000, 40, generator=gen, dtype=torch.float64)) * k_true
    k = pareto_k_hat(lw)
    assert abs(k.mean() - k_true) < 4 * k.std() / 40**0.5


def test_ess_formula():
    assert effective_sample_size(torch.zeros(7, 2)).tolist() == pytest.approx([7.0, 7.0])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert effective_sample_size(w.log()[:, None]).item() == pytest.approx(
        (w.sum() ** 2 / (w**2).sum()).item()
    )


def test_exact_posterior_guide_has_full_ess_and_good_k_hat_while_a_bad_guide_does_not():
    torch.manual_seed(0)
    m = LinearGaussian(4, 2).double()
    m.set_guide_to_posterior()
    x = torch.randn(5, 4, dtype=torch.float64)
    good = importance_diagnostics(m.model, m.guide, x, num_particles=500)
    assert good.ess == pytest.approx(torch.full((5,), 500.0, dtype=torch.float64))
    assert (good.k_hat == float("-inf")).all()
    with torch.no_grad():  # a guide far too narrow: the weights' tail is heavy
        m.recognition.raw_tril.copy_(torch.diag(torch.full((2,), -4.0)))
    bad = importance_diagnostics(m.model, m.guide, x, num_particles=2000)
    assert (bad.k_hat > 0.7).all() and (bad.ess < 0.1 * 2000).all()
    assert bad.summary()["fraction_k_hat_above_0.7"] == 1.0


def _linear_program(a: torch.Tensor, s: float):
    """q(z|x) = N(x A, s^2 I), p(z) = N(0, I): active units and KL per dim are closed-form."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(a.shape[1]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand_as(x), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ a, s).to_event(1))

    return model, guide


def test_active_units_and_kl_per_dimension_in_closed_form():
    a = torch.tensor([[1.0, 0.0, 0.05], [0.5, 0.0, 0.0]])  # dim 1 ignores x, dim 2 barely uses it
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    model, guide = _linear_program(a, 0.5)
    au = active_units(guide, x)
    torch.testing.assert_close(au.variance, (x @ a).var(0))
    assert au.active.tolist() == [True, False, False] and au.count == 1
    mean = x @ a
    expected = (0.5 * (mean**2 + 0.25 - 1 - 2 * torch.log(torch.tensor(0.5)))).mean(0)
    torch.testing.assert_close(kl_per_dimension(model, guide, x), expected)
    with pytest.raises(InputError, match="no latent sample site 'w'"):
        active_units(guide, x, site="w")


def test_posterior_samples_as_inference_data_approach_the_exact_posterior_when_resampled():
    torch.manual_seed(0)
    m = LinearGaussian(3, 2).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    idata = posterior_inference_data(m.model, m.guide, x, num_samples=4000, resample=True)
    z = torch.as_tensor(idata.posterior["z"].values[0])  # (draw, datapoint, dim)
    assert tuple(idata.posterior["z"].dims) == ("chain", "draw", "datapoint", "z_dim")
    post = m.posterior(x)
    # resampled draws carry about ESS independent draws' worth of information (plus the
    # resampling noise, at most doubling the variance): SE = sd * sqrt(2 / ESS)
    ess = effective_sample_size(torch.as_tensor(idata.sample_stats["log_weight"].values[0]))
    se = post.variance.sqrt().detach() * (2 / ess[:, None]) ** 0.5
    assert ((z.mean(0) - post.mean.detach()).abs() < 4 * se).all()
    plain = posterior_inference_data(m.model, m.guide, x, num_samples=10)
    assert plain.posterior["z"].shape == (1, 10, 2, 2)


def test_a_scalar_latent_has_one_dimension_and_a_one_hot_code_is_refused():
    """z_n ~ N(0, 1) scalar, q(z_n | x_n) = N(mean(x_n), 0.5): one latent dimension, whose KL
    is the closed-form average and whose active-unit variance is that of mean(x_n)."""
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], dtype=x.dtype), 1.0))
            y = pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(x.shape[0], 3, dtype=x.dtype)))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1) + y, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.mean(-1), 0.5))
            pyro.sample("y", dist.OneHotCategorical(logits=x))

    kl = kl_per_dimension(model, guide, x)
    expected = torch.distributions.kl_divergence(dist.Normal(x.mean(-1), 0.5), dist.Normal(0.0, 1.0)).mean()
    assert kl.shape == (1,)
    torch.testing.assert_close(kl[0], expected)
    au = active_units(guide, x)
    torch.testing.assert_close(au.variance, x.mean(-1).var().reshape(1))
    with pytest.raises(InputError, match="not factorized over its event"):
        kl_per_dimension(model, guide, x, site="y")


def test_k_hat_of_tied_discrete_weights_is_not_fitted_rather_than_infinite():
    """Log-weights with two values only (a discrete guide over a small support): ArviZ gives
    k-hat = inf; they are bounded, so their variance is finite; we report NaN, counted apart."""
    lw = torch.zeros(200, 3, dtype=torch.float64)
    lw[::7] = -0.3
    k = pareto_k_hat(lw)
    assert torch.isnan(k).all()
    from pyro_vae.diagnostics import ImportanceDiagnostics

    summary = ImportanceDiagnostics(
        k_hat=torch.tensor([0.2, float("nan")]), ess=torch.ones(2), num_particles=200
    ).summary()
    assert summary["num_k_hat_not_fitted"] == 1 and summary["k_hat_median"] == pytest.approx(0.2)
