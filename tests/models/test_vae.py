"""The VAE as a Pyro program."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_vae.errors import InputError
from pyro_vae.infer import MeanFieldELBO, log_terms
from pyro_vae.likelihoods import ZINB, Bernoulli, Gaussian
from pyro_vae.models import VAE
from tests.conftest import standard_error


def _binary(n=16, d=12, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def test_model_and_guide_are_plain_pyro_programs():
    vae = VAE(Bernoulli(12), latent_dim=3, hidden=(8,))
    x = _binary()
    guide_trace = poutine.trace(vae.guide).get_trace(x, num_data=100)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, num_data=100)
    assert guide_trace.nodes["z"]["fn"].has_rsample
    assert model_trace.nodes["x"]["is_observed"]
    assert model_trace.nodes["z"]["fn"].event_shape == (3,)
    (frame,) = model_trace.nodes["x"]["cond_indep_stack"]
    assert (frame.name, frame.size, frame.full_size) == ("data", 16, 100)
    assert model_trace.nodes["x"]["scale"] == pytest.approx(100 / 16)
    params = {n for n, s in model_trace.nodes.items() if s["type"] == "param"}
    assert any(p.startswith("vae_decoder$$$") for p in params)


def test_conditional_vae_needs_y_and_uses_it():
    vae = VAE(Bernoulli(12), latent_dim=2, hidden=(8,), num_classes=3)
    x, y = _binary(), torch.arange(16) % 3
    with pytest.raises(InputError, match="pass y"):
        vae.guide(x)
    loc_a, _ = vae.encode(x, y)
    loc_b, _ = vae.encode(x, (y + 1) % 3)
    assert not torch.allclose(loc_a, loc_b)
    with pytest.raises(InputError, match="out of range"):
        vae.validate_data(x, y + 1)


def test_beta_scales_the_kl_and_beta_zero_removes_it():
    """Objective = E log p(x|z) - beta KL, checked against beta=1 with the same draws."""
    torch.manual_seed(0)
    x = _binary()
    vae = VAE(Bernoulli(12), latent_dim=3, hidden=(8,))
    values = {}
    for beta in (0.0, 0.5, 1.0):
        vae.beta = beta
        pyro.set_rng_seed(5)
        values[beta] = -MeanFieldELBO().loss(vae.model, vae.guide, x)
    vae.beta = 1.0
    loc, scale = vae.encode(x)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)
    ).sum()
    assert values[0.0] - values[1.0] == pytest.approx(kl.item(), rel=1e-5)
    assert values[0.0] - values[0.5] == pytest.approx(0.5 * kl.item(), rel=1e-5)


def test_monte_carlo_elbo_matches_analytic_kl_elbo_within_standard_errors():
    """Trace_ELBO (sampled KL) and MeanFieldELBO (analytic KL) estimate the same number."""
    x = _binary(8)
    vae = VAE(Bernoulli(12), latent_dim=3, hidden=(8,))
    mc = torch.tensor([-Trace_ELBO().loss(vae.model, vae.guide, x) for _ in range(400)])
    an = torch.tensor([-MeanFieldELBO().loss(vae.model, vae.guide, x) for _ in range(400)])
    se = (standard_error(mc) ** 2 + standard_error(an) ** 2).sqrt()
    assert abs(mc.mean() - an.mean()) < 4 * se


def test_float64_data_runs_in_float64():
    vae = VAE(Gaussian(5), latent_dim=2, hidden=(4,)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    terms = log_terms(vae.model, vae.guide, x, num_particles=3)
    assert terms.log_weight.dtype == torch.float64
    assert vae.reconstruct(x).dtype == torch.float64


def test_zinb_vae_vectorizes_over_particles():
    vae = VAE(ZINB(7), latent_dim=2, hidden=(5,))
    x = torch.poisson(torch.full((9, 7), 2.0))
    assert log_terms(vae.model, vae.guide, x, num_particles=4).log_weight.shape == (4, 9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"beta": -1.0}, "beta"),
        ({"num_classes": -2}, "num_classes"),
        ({"hidden": (0,)}, "hidden width"),
    ],
)
def test_invalid_hyperparameters_are_rejected(kwargs, message):
    with pytest.raises(InputError, match=message):
        VAE(Bernoulli(4), **kwargs)


def test_validate_data_reports_feature_mismatch_and_nonfinite_position():
    vae = VAE(Gaussian(4), latent_dim=2)
    with pytest.raises(InputError, match="3 features.*expects 4"):
        vae.validate_data(torch.zeros(2, 3))
    x = torch.zeros(3, 4)
    x[2, 1] = float("nan")
    with pytest.raises(InputError, match=r"non-finite.*\(row 2, column 1\)"):
        vae.validate_data(x)
    with pytest.raises(InputError, match="empty"):
        vae.validate_data(torch.zeros(0, 4))
