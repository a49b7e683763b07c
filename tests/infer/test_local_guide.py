"""The per-datapoint Gaussian guide and its ELBO against the linear-Gaussian model's closed forms."""

import pytest
import torch
from torch.distributions import kl_divergence

from pyro_vae.errors import InputError
from pyro_vae.infer.local_guide import LocalGaussian, amortized_site, local_elbo
from pyro_vae.infer.particles import probing
from tests._linear_gaussian import random_linear_gaussian


def _model(d=5, k=2, seed=0):
    m = random_linear_gaussian(d, k, seed)
    with torch.no_grad():
        m.recognition.weight.normal_(0, 0.3)
        m.recognition.raw_tril.normal_(0, 0.3)
    return m


def _local(m, x, *, detach=True):
    with probing((x,)):
        site, frame = amortized_site(m.guide, (x,), {}, "z", purpose="test")
    return LocalGaussian.from_site(site, frame, detach=detach)


def test_local_gaussian_starts_at_the_amortized_guide_and_keeps_its_plate():
    m = _model()
    x = torch.randn(6, 5, dtype=torch.float64)
    local = _local(m, x)
    q, ref = local.distribution(), m.guide_distribution(x)
    torch.testing.assert_close(q.loc, ref.loc)
    torch.testing.assert_close(q.scale_tril, ref.scale_tril.expand_as(q.scale_tril))
    assert (local.plate_name, local.plate_dim, local.plate_size) == ("data", -1, 6)
    assert all(p.is_leaf and p.requires_grad for p in local.params)


def test_sigma_point_local_elbo_is_the_exact_elbo_of_the_linear_gaussian_model():
    """2d sigma points integrate the quadratic log-likelihood exactly: the local ELBO equals
    log p(x) - KL(q || p(z|x)) to rounding, for a full-covariance and a diagonal Gaussian."""
    m = _model()
    x = torch.randn(6, 5, dtype=torch.float64)
    local = _local(m, x)
    exact = m.exact_elbo(x)
    torch.testing.assert_close(local_elbo(m.model, local, (x,), {}, sigma_points=True), exact)
    loc, _, log_diag = local.params
    diag = LocalGaussian(
        site="z",
        kind="normal",
        event=1,
        params=(loc, log_diag),
        plate_name="data",
        plate_dim=-1,
        plate_size=6,
    )
    q = torch.distributions.MultivariateNormal(loc, scale_tril=torch.diag_embed(log_diag.exp()))
    exact_diag = m.log_marginal(x) - kl_divergence(q, m.posterior(x))
    torch.testing.assert_close(local_elbo(m.model, diag, (x,), {}, sigma_points=True), exact_diag)


def test_random_local_elbo_is_unbiased_for_the_exact_elbo():
    m = _model()
    x = torch.randn(4, 5, dtype=torch.float64)
    local = _local(m, x)
    with torch.no_grad():
        draws = torch.stack([local_elbo(m.model, local, (x,), {}, num_particles=50) for _ in range(40)])
    se = draws.std(0) / 40**0.5
    assert ((draws.mean(0) - m.exact_elbo(x)).abs() < 4 * se).all()


def test_a_non_gaussian_or_second_latent_site_is_refused_by_name():
    from tests.programs import CASES

    case = CASES["discrete_then_continuous"]
    program, data = case.build(), case.data(6)
    with pytest.raises(InputError, match="other latent sites"):
        amortized_site(program.guide, data, {}, "z", purpose="refinement")
    with pytest.raises(InputError, match="no latent sample site 'w'"):
        amortized_site(program.guide, data, {}, "w", purpose="refinement")
