"""Every likelihood's log-density against scipy.stats."""

import numpy as np
import pytest
import scipy.stats as st
import torch

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
