"""Missingness masks: the masked likelihood is the density of the observed features, the masked
models' bounds are bounds on log p(x_obs), the encoder never reads a missing value, and fit
trains on incomplete data with the mask minibatched as data."""

import numpy as np
import pyro
import pytest
import scipy.stats as st
import torch

from pyro_vae.bounds import elbo
from pyro_vae.errors import InputError
from pyro_vae.likelihoods import ZINB, Bernoulli, Gaussian, NegativeBinomial, Poisson
from pyro_vae.models import LinearGaussian, MaskedVAE
from pyro_vae.train import fit

D = 6


def _mask(seed=0):
    return torch.rand(4, D, generator=torch.Generator().manual_seed(seed)) < 0.6


@pytest.mark.parametrize("cls", [Bernoulli, Gaussian, Poisson, NegativeBinomial, ZINB])
def test_the_masked_density_is_the_sum_over_observed_features(cls):
    lik = cls(D).double()
    out = torch.randn(4, lik.num_outputs, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = lik(out).sample()
    mask = _mask()
    per_feature = lik(out).base_dist.log_prob(x)
    expected = (per_feature * mask).sum(-1)
    torch.testing.assert_close(lik.masked(out, mask).log_prob(x), expected)
    torch.testing.assert_close(lik.masked(out, mask.double()).log_prob(x), expected)  # float 0/1 masks too
    assert lik.masked(out, mask).sample().shape == x.shape  # every feature is drawn


def test_the_masked_gaussian_density_matches_scipy_on_the_observed_features():
    lik = Gaussian(D, init_scale=0.7).double()
    loc = torch.randn(4, D, dtype=torch.float64)
    x = torch.randn(4, D, dtype=torch.float64)
    mask = _mask(3)
    ref = st.norm.logpdf(x.numpy(), loc.numpy(), 0.7)
    ref = np.where(mask.numpy(), ref, 0).sum(-1)
    np.testing.assert_allclose(lik.masked(loc, mask).log_prob(x).detach().numpy(), ref, rtol=1e-6)
    with pytest.raises(InputError, match="does not broadcast"):
        lik.masked(loc, mask[:, :3])


def test_the_masked_linear_gaussian_elbo_is_exactly_log_p_of_the_observed_features():
    """With the exact p(z | x_obs) as guide the ELBO of the masked model is log p(x_obs)
    (the marginal on the observed coordinates), with zero variance."""
    torch.manual_seed(0)
    m = LinearGaussian(5, 2).double()
    x = m.marginal().sample((3,)).detach()
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.float64)

    def exact_guide(x, mask):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", m.posterior(x, mask))

    got = elbo(m.model, exact_guide, x, mask, num_particles=10)
    marg = m.marginal()
    for i in range(3):
        obs = (mask[i] > 0).nonzero().flatten()
        sub = torch.distributions.MultivariateNormal(marg.loc[obs], marg.covariance_matrix[obs][:, obs])
        torch.testing.assert_close(got[i], sub.log_prob(x[i, obs]).detach())


def test_the_encoder_sees_the_observed_part_only():
    torch.manual_seed(0)
    vae = MaskedVAE(Bernoulli(D), latent_dim=2, hidden=(8,))
    x = (torch.rand(4, D) < 0.5).float()
    mask = _mask().float()
    flipped = torch.where(mask > 0, x, 1 - x)
    for a, b in zip(vae.encode(x, mask), vae.encode(flipped, mask), strict=True):
        torch.testing.assert_close(a, b)
    # a missing pixel and an observed 0 are different inputs
    zeros = torch.zeros(1, D)
    assert not torch.equal(vae.encode(zeros, torch.ones(1, D))[0], vae.encode(zeros, torch.zeros(1, D))[0])


def test_fit_trains_a_masked_vae_on_incomplete_data():
    torch.manual_seed(0)
    x = (torch.rand(64, D) < 0.3).float()
    mask = (torch.rand(64, D) < 0.7).float()
    vae = MaskedVAE(Bernoulli(D), latent_dim=2, hidden=(16,))
    vae.validate_data(x, mask)
    res = fit(
        vae.model,
        vae.guide,
        (x, mask),
        validation=(x[:16], mask[:16]),
        epochs=4,
        batch_size=16,
        lr=1e-2,
        progress=False,
    )
    assert res.history[-1]["val_elbo"] > res.history[0]["val_elbo"]
    assert res.scaling == ("program",)
    with pytest.raises(InputError, match="mask"):
        vae.validate_data(x, mask[:, :3])
