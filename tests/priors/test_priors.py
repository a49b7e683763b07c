"""Priors against direct computations (scipy.stats, explicit logsumexp), their registration
in the VAE, and the ELBO's fallback to a sampled prior term where no KL is in closed form."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from scipy import stats

from pyro_vae.bounds import elbo, log_marginal
from pyro_vae.errors import InputError
from pyro_vae.infer import MeanFieldELBO
from pyro_vae.infer.particles import record
from pyro_vae.infer.terms import collect_terms
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.networks import GaussianEncoder
from pyro_vae.priors import LearnedNormal, MixtureOfGaussians, StandardNormal, VampPrior
from tests.conftest import standard_error


def _perturbed(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    return module


def _z(n=7, k=3, dtype=torch.float64):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(2), dtype=dtype)


def test_learned_normal_log_prob_is_scipy_norm_and_starts_at_standard_normal():
    z = _z()
    prior = LearnedNormal(3)
    torch.testing.assert_close(prior(z).log_prob(z), StandardNormal(3)(z).log_prob(z))
    _perturbed(prior)
    loc, scale = prior.loc.detach().double().numpy(), prior.scale.detach().double().numpy()
    expected = stats.norm(loc, scale).logpdf(z.numpy()).sum(-1)
    np.testing.assert_allclose(prior(z).log_prob(z).detach().numpy(), expected, rtol=1e-10)


def test_mixture_log_prob_is_an_explicit_logsumexp_of_scipy_densities():
    z = _z()
    prior = _perturbed(MixtureOfGaussians(3, 4))
    log_pi = torch.log_softmax(prior.logits.detach().double(), 0).numpy()
    locs, scales = prior.locs.detach().double().numpy(), prior.scales.detach().double().numpy()
    per_component = np.stack(
        [
            log_pi[c] + stats.multivariate_normal(locs[c], np.diag(scales[c] ** 2)).logpdf(z.numpy())
            for c in range(4)
        ]
    )
    expected = np.logaddexp.reduce(per_component, axis=0)
    np.testing.assert_allclose(prior(z).log_prob(z).detach().numpy(), expected, rtol=1e-10)


def test_vamp_prior_is_the_mean_of_the_encoders_posteriors_at_the_pseudo_inputs():
    torch.manual_seed(0)
    encoder = GaussianEncoder(5, (6,), 3).double()
    prior = VampPrior(encoder, 4, 5).double()
    z = _z()
    with torch.no_grad():
        loc, scale = encoder(prior.pseudo_inputs)
        per_component = torch.stack(
            [
                torch.tensor(stats.norm(loc[c].numpy(), scale[c].numpy()).logpdf(z.numpy()).sum(-1))
                for c in range(4)
            ]
        )
        expected = torch.logsumexp(per_component, 0) - math.log(4)
        torch.testing.assert_close(prior(z).log_prob(z), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LearnedNormal(2),
        lambda: MixtureOfGaussians(2, 3),
        lambda: VampPrior(GaussianEncoder(4, (3,), 2).double(), 3, 4).double(),
    ],
)
def test_samples_have_the_priors_mean_within_standard_errors(make):
    prior = _perturbed(make())
    like = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        z = prior(like).sample((20000,))
        if isinstance(prior, MixtureOfGaussians):
            mean = (torch.softmax(prior.logits, 0)[:, None] * prior.locs).sum(0)
        elif isinstance(prior, VampPrior):
            mean = prior.encoder(prior.pseudo_inputs)[0].mean(0)  # equal weights 1/C
        else:
            mean = prior.loc
    assert z.dtype == torch.float64 and z.shape == (20000, 2)
    assert ((z.mean(0) - mean.double()).abs() < 4 * standard_error(z)).all()


@pytest.mark.parametrize(
    "make",
    [
        StandardNormal,
        LearnedNormal,
        lambda k: MixtureOfGaussians(k, 3),
        lambda k: VampPrior(GaussianEncoder(5, (4,), k).double(), 3, 5),
    ],
)
def test_dtype_follows_the_reference_tensor(make):
    """(A VampPrior's encoder is the model's: it has the data's dtype, as the guide needs.)"""
    prior = make(2)
    like = torch.zeros(4, 5, dtype=torch.float64)
    p = prior(like)
    assert (
        p.sample().dtype == torch.float64
        and p.log_prob(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64
    )
    assert tuple(p.event_shape) == (2,)


def _binary(n=16, d=6, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def test_the_vae_registers_a_learned_prior_in_its_model():
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(4,), prior=MixtureOfGaussians(2, 3))
    trace = poutine.trace(vae.model).get_trace(_binary())
    params = {n for n, s in trace.nodes.items() if s["type"] == "param"}
    assert {"vae_prior$$$logits", "vae_prior$$$locs", "vae_prior$$$raw_scales"} <= params
    plain = VAE(Bernoulli(6), latent_dim=2, hidden=(4,))  # N(0, I): no parameter, names unchanged
    pyro.clear_param_store()
    trace = poutine.trace(plain.model).get_trace(_binary())
    assert not any(n.startswith("vae_prior") for n, s in trace.nodes.items() if s["type"] == "param")


def test_vamp_prior_shares_the_encoder_and_registers_each_parameter_once():
    encoder = GaussianEncoder(6, (4,), 2)
    prior = VampPrior(encoder, 3, 6)
    vae = VAE(Bernoulli(6), latent_dim=2, encoder=encoder, prior=prior)
    assert vae.encoder is encoder and prior.encoder is encoder
    assert set(prior.state_dict()) == {"pseudo_inputs"}
    x = _binary()
    loss = MeanFieldELBO().differentiable_loss(vae.model, vae.guide, x)
    store = pyro.get_param_store()
    names = list(store.keys())
    assert "vae_prior$$$pseudo_inputs" in names
    assert not any(n.startswith("vae_prior$$$") and n != "vae_prior$$$pseudo_inputs" for n in names)
    ids = [id(store[n].unconstrained()) for n in names]
    assert len(ids) == len(set(ids))  # no tensor under two names
    assert sum(p.numel() for p in vae.parameters()) == sum(store[n].numel() for n in names)
    loss.backward()  # log p(z) reaches both the pseudo-inputs and the shared encoder
    assert prior.pseudo_inputs.grad.abs().sum() > 0
    with pytest.raises(InputError, match="not this VAE's"):
        VAE(Bernoulli(6), latent_dim=2, prior=VampPrior(GaussianEncoder(6, (4,), 2), 3, 6))
    shared = GaussianEncoder(8, (4,), 2)
    with pytest.raises(InputError, match="unconditional"):
        VAE(Bernoulli(6), latent_dim=2, num_classes=2, encoder=shared, prior=VampPrior(shared, 3, 8))


def test_mean_field_elbo_samples_the_prior_term_only_where_no_kl_is_in_closed_form():
    """MoG prior: log_prior and log_guide are the densities at the guide's draw; learned Gaussian:
    -KL in closed form (log_guide empty)."""
    x = _binary()
    for prior, closed in ((MixtureOfGaussians(2, 3), False), (LearnedNormal(2), True)):
        vae = VAE(Bernoulli(6), latent_dim=2, hidden=(4,), prior=prior)
        with torch.no_grad():
            _, guide_sites = record(vae.model, vae.guide, (x,), {})
            run = MeanFieldELBO().particles(vae.model, vae.guide, (x,), {})
            terms = collect_terms(run, scaled=False, analytic_kl=True)
        q = guide_sites["z"].fn
        if closed:
            assert (terms.log_guide == 0).all()
            kl = torch.distributions.kl_divergence(q, prior(x))
            torch.testing.assert_close(terms.log_prior[0], -kl)
        else:
            z = run.guide_values("z")[0]
            torch.testing.assert_close(terms.log_prior[0], prior(x).log_prob(z))
            torch.testing.assert_close(terms.log_guide[0], q.log_prob(z))


def _quadrature_answers(vae: VAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (to quadrature accuracy) log p(x_n) and ELBO_n of a VAE with a one-dimensional
    latent: log p(x) on a fine grid, the ELBO by 80-point Gauss-Hermite quadrature under q."""
    with torch.no_grad():
        grid = torch.linspace(-12, 12, 6001, dtype=x.dtype)[:, None]  # (G, 1)
        log_lik = vae.likelihood(vae.decoder(grid)).log_prob(x[:, None, :])  # (N, G)
        log_joint = log_lik + vae.prior(x).log_prob(grid)
        log_px = torch.logsumexp(log_joint, -1) + math.log(grid[1, 0] - grid[0, 0])
        nodes, weights = np.polynomial.hermite_e.hermegauss(80)
        nodes = torch.tensor(nodes, dtype=x.dtype)
        weights = torch.tensor(weights, dtype=x.dtype) / math.sqrt(2 * math.pi)
        loc, scale = vae.encode(x)
        z = loc + scale * nodes  # (N, Q)
        q = torch.distributions.Normal(loc, scale)
        integrand = (
            vae.likelihood(vae.decoder(z[..., None])).log_prob(x[:, None, :])
            + vae.prior(x).log_prob(z[..., None])
            - q.log_prob(z)
        )
        return log_px, (integrand * weights).sum(-1)


@pytest.mark.parametrize("kind", ["mog", "vamp"])
def test_bounds_with_mixture_priors_match_quadrature(kind):
    """ELBO (bounds and MeanFieldELBO's sampled prior term) and log p(x) of a one-latent VAE
    with a mixture prior, against quadrature, within 4 standard errors."""
    torch.manual_seed(0)
    encoder = GaussianEncoder(6, (5,), 1)
    prior = MixtureOfGaussians(1, 3, init_scale=2.0) if kind == "mog" else VampPrior(encoder, 3, 6)
    vae = VAE(Bernoulli(6), latent_dim=1, hidden=(5,), encoder=encoder, prior=prior).double()
    with torch.no_grad():  # a guide wide enough for importance sampling to converge at K = 4000
        encoder.net[-1].bias[1:] = 2.0
    x = _binary(5).double()
    exact_log_px, exact_elbo = _quadrature_answers(vae, x)
    estimate = elbo(vae.model, vae.guide, x, num_particles=4000, return_error=True)
    assert ((estimate.value - exact_elbo).abs() < 4 * estimate.standard_error).all()
    lm = log_marginal(vae.model, vae.guide, x, num_particles=4000)
    assert ((lm.value - exact_log_px).abs() < 4 * lm.standard_error + 1e-3).all()
    losses = torch.tensor([MeanFieldELBO(num_particles=50).loss(vae.model, vae.guide, x) for _ in range(40)])
    assert abs(-losses.mean() - exact_elbo.sum()) < 4 * standard_error(losses)
