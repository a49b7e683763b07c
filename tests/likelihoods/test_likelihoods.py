"""Every likelihood's log-density against scipy.stats."""

import numpy as np
import pytest
import scipy.stats as st
import torch
from scipy.special import expit, gammaln

from pyro_vae.errors import InputError
from pyro_vae.likelihoods import ZINB, Bernoulli, Gaussian, NegativeBinomial, Poisson, nb_distribution

D = 6


def _out(n_outputs: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(4, n_outputs, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_bernoulli_matches_scipy():
    lik = Bernoulli(D)
    logits = _out(D)
    x = (torch.rand(4, D, dtype=torch.float64) < 0.5).double()
    ours = lik(logits).log_prob(x)
    p = torch.sigmoid(logits).numpy()
    ref = st.bernoulli.logpmf(x.numpy(), p).sum(-1)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10)
    assert lik(logits).event_shape == (D,)


def test_gaussian_matches_scipy_and_learns_scale():
    lik = Gaussian(D, init_scale=0.7).double()
    np.testing.assert_allclose(lik.scale.detach().numpy(), 0.7, rtol=1e-6)
    loc = _out(D)
    x = torch.randn(4, D, dtype=torch.float64)
    ref = st.norm.logpdf(x.numpy(), loc.numpy(), lik.scale.detach().numpy()).sum(-1)
    np.testing.assert_allclose(lik(loc).log_prob(x).detach().numpy(), ref, rtol=1e-10)
    assert [n for n, _ in lik.named_parameters()] == ["raw_scale"]


def test_poisson_matches_scipy():
    lik = Poisson(D)
    log_rate = _out(D)
    x = torch.poisson(torch.full((4, D), 3.0, dtype=torch.float64))
    ref = st.poisson.logpmf(x.numpy(), np.exp(log_rate.numpy())).sum(-1)
    np.testing.assert_allclose(lik(log_rate).log_prob(x).numpy(), ref, rtol=1e-10)


def test_negative_binomial_matches_scipy_in_mean_dispersion_form():
    lik = NegativeBinomial(D, init_inverse_dispersion=2.5).double()
    log_mean = _out(D)
    mu, theta = np.exp(log_mean.numpy()), lik.inverse_dispersion.detach().numpy()
    x = torch.tensor(np.random.default_rng(0).integers(0, 12, size=(4, D)), dtype=torch.float64)
    ref = st.nbinom.logpmf(x.numpy(), n=theta, p=theta / (theta + mu)).sum(-1)
    np.testing.assert_allclose(lik(log_mean).log_prob(x).detach().numpy(), ref, rtol=1e-9)


def test_nb_conversion_gives_mean_and_variance():
    mu = torch.tensor([0.5, 3.0, 40.0], dtype=torch.float64)
    theta = torch.tensor([0.3, 2.0, 10.0], dtype=torch.float64)
    d = nb_distribution(mu, theta)
    torch.testing.assert_close(d.mean, mu)
    torch.testing.assert_close(d.variance, mu + mu**2 / theta)
    mean, var = st.nbinom.stats(n=theta.numpy(), p=(theta / (theta + mu)).numpy(), moments="mv")
    np.testing.assert_allclose(mean, mu.numpy())
    np.testing.assert_allclose(var, (mu + mu**2 / theta).numpy())


def test_zinb_matches_mixture_of_point_mass_and_scipy_nb():
    lik = ZINB(D, init_inverse_dispersion=1.7).double()
    out = _out(2 * D)
    log_mean, gate_logits = out[:, :D], out[:, D:]
    mu, theta = np.exp(log_mean.numpy()), lik.inverse_dispersion.detach().numpy()
    pi = 1 / (1 + np.exp(-gate_logits.numpy()))
    x = np.random.default_rng(1).integers(0, 6, size=(4, D)).astype(float)
    x[:, 0] = 0  # make sure the zero branch is exercised
    nb = st.nbinom.pmf(x, n=theta, p=theta / (theta + mu))
    ref = np.log(pi * (x == 0) + (1 - pi) * nb).sum(-1)
    ours = lik(out).log_prob(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def _nb_logpmf_log_space(x, log_mu, log_theta):
    """float64 reference: lgamma(x+θ) - lgamma(θ) - lgamma(x+1) + θ log(θ/(θ+μ)) + x log(μ/(θ+μ)),
    with log(θ+μ) = logaddexp(log θ, log μ), so that no μ = exp(log μ) is ever formed."""
    theta = np.exp(log_theta)
    log_total = np.logaddexp(log_theta, log_mu)
    return (
        gammaln(x + theta)
        - gammaln(theta)
        - gammaln(x + 1)
        + theta * (log_theta - log_total)
        + x * (log_mu - log_total)
    )


def _nb_dlogpmf_dlog_mu(x, log_mu, log_theta):
    """d/d(log μ) of the log-pmf: x θ/(θ+μ) - θ μ/(θ+μ), written with logistic functions."""
    return x * expit(log_theta - log_mu) - np.exp(log_theta) * expit(log_mu - log_theta)


def test_log_space_reference_is_scipys_nbinom():
    x, log_mu, log_theta = (
        np.array([0.0, 1.0, 5.0, 40.0]),
        np.array([-1.0, 0.3, 2.0, 4.0]),
        np.log([0.4, 2.5, 1.0, 9.0]),
    )
    mu, theta = np.exp(log_mu), np.exp(log_theta)
    ref = st.nbinom.logpmf(x, n=theta, p=theta / (theta + mu))
    np.testing.assert_allclose(_nb_logpmf_log_space(x, log_mu, log_theta), ref, rtol=1e-12)


# log means whose exp overflows (float32 above ~88.7, float64 above ~709.8) or underflows
EXTREME = [(torch.float32, 100.0), (torch.float32, -110.0), (torch.float64, 750.0), (torch.float64, -760.0)]
COUNTS = np.array([[0.0, 1.0, 3.0], [12.0, 250.0, 0.0]])


@pytest.mark.parametrize(("dtype", "log_mean"), EXTREME)
def test_negative_binomial_is_finite_and_exact_at_extreme_log_means(dtype, log_mean):
    lik = NegativeBinomial(3, init_inverse_dispersion=2.5).to(dtype)
    log_theta = lik.log_inverse_dispersion.detach().double().numpy()
    offsets = np.array([[0.0, -0.5, 0.3], [0.7, 0.0, -1.0]])  # varied log means around log_mean
    out = torch.tensor(log_mean + offsets, dtype=dtype, requires_grad=True)
    lp = lik(out).log_prob(torch.tensor(COUNTS, dtype=dtype))
    ref = _nb_logpmf_log_space(COUNTS, log_mean + offsets, log_theta)
    assert lp.dtype == dtype and torch.isfinite(lp).all(), lp
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(lp.detach().double().numpy(), ref.sum(-1), rtol=rtol)
    lp.sum().backward()
    assert torch.isfinite(out.grad).all(), out.grad
    dref = _nb_dlogpmf_dlog_mu(COUNTS, log_mean + offsets, log_theta)
    np.testing.assert_allclose(out.grad.double().numpy(), dref, rtol=rtol, atol=rtol)
    assert torch.isfinite(lik.log_inverse_dispersion.grad).all()


@pytest.mark.parametrize(("dtype", "log_mean"), EXTREME)
def test_zinb_is_finite_and_exact_at_extreme_log_means(dtype, log_mean):
    lik = ZINB(3, init_inverse_dispersion=1.7).to(dtype)
    log_theta = lik.log_inverse_dispersion.detach().double().numpy()
    offsets = np.array([[0.0, -0.5, 0.3], [0.7, 0.0, -1.0]])
    gate_logits = np.array([[-1.0, 0.5, 2.0], [0.0, -3.0, 1.0]])
    out = torch.tensor(np.concatenate([log_mean + offsets, gate_logits], -1), dtype=dtype, requires_grad=True)
    lp = lik(out).log_prob(torch.tensor(COUNTS, dtype=dtype))
    log_nb = _nb_logpmf_log_space(COUNTS, log_mean + offsets, log_theta)
    log_pi, log_1m_pi = -np.logaddexp(0, -gate_logits), -np.logaddexp(0, gate_logits)
    ref = np.where(COUNTS == 0, np.logaddexp(log_pi, log_1m_pi + log_nb), log_1m_pi + log_nb).sum(-1)
    assert lp.dtype == dtype and torch.isfinite(lp).all(), lp
    np.testing.assert_allclose(
        lp.detach().double().numpy(), ref, rtol=1e-5 if dtype == torch.float32 else 1e-12
    )
    lp.sum().backward()
    assert torch.isfinite(out.grad).all() and torch.isfinite(lik.log_inverse_dispersion.grad).all()


@pytest.mark.parametrize("cls", [Bernoulli, Gaussian, Poisson, NegativeBinomial, ZINB])
def test_decoder_output_width_and_event_shape(cls):
    lik = cls(D)
    out = torch.randn(3, 5, lik.num_outputs)
    assert lik(out).batch_shape == (3, 5)
    assert lik(out).event_shape == (D,)


@pytest.mark.parametrize("cls", [Poisson, NegativeBinomial, ZINB])
def test_count_likelihoods_reject_negative_and_fractional_values(cls):
    lik = cls(3)
    with pytest.raises(InputError, match=r"negative values.*\(row 1, column 2\)"):
        lik.validate(torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]]))
    with pytest.raises(InputError, match=r"non-integer.*\(row 0, column 1\)"):
        lik.validate(torch.tensor([[0.0, 1.5, 2.0]]))
    lik.validate(torch.tensor([[0.0, 1.0, 7.0]]))


def test_bernoulli_rejects_grey_levels_unless_allowed():
    x = torch.tensor([[0.0, 1.0], [0.5, 1.0]])
    with pytest.raises(InputError, match=r"binary.*\(row 1, column 0\).*allow_probabilities"):
        Bernoulli(2).validate(x)
    Bernoulli(2, allow_probabilities=True).validate(x)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        Bernoulli(2, allow_probabilities=True).validate(x + 0.6)
