"""Flow posteriors: the density against a change of variables with an autograd Jacobian,
reparameterized gradients, and the bounds and fit of a VAE that uses them."""

import math

import pytest
import torch

from pyro_vae.bounds import elbo, iwae, log_marginal
from pyro_vae.errors import InputError
from pyro_vae.guides import DiagonalGaussian, IAFPosterior, PlanarPosterior
from pyro_vae.infer import MeanFieldELBO
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.networks import GaussianEncoder
from pyro_vae.train import fit

FLOWS = {"iaf": IAFPosterior, "planar": PlanarPosterior}


def _perturb(module, scale=0.5, seed=3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


@pytest.mark.parametrize("kind", sorted(FLOWS))
def test_log_density_is_the_change_of_variables_with_an_autograd_jacobian(kind):
    """log q(z) = log N(z0; mu, sigma) - log |det dz/dz0|, the Jacobian from autograd."""
    torch.manual_seed(0)
    k, c = 3, 4
    posterior = _perturb(FLOWS[kind](k, c, num_steps=3, hidden=(7,)).double())
    loc, scale = torch.randn(2, k, dtype=torch.float64), torch.rand(2, k, dtype=torch.float64) + 0.5
    context = torch.randn(2, c, dtype=torch.float64)
    q = posterior(loc, scale, context)
    z0 = loc + scale * torch.randn(2, k, dtype=torch.float64)
    z = z0
    for t in q.transforms:
        z = t(z)
    log_q = q.log_prob(z)
    for n in range(2):

        def flow(u, n=n):
            out = u
            for step in posterior.steps:
                out = step.condition(context[n])(out)
            return out

        jacobian = torch.autograd.functional.jacobian(flow, z0[n])
        base = torch.distributions.Normal(loc[n], scale[n]).log_prob(z0[n]).sum()
        expected = base - torch.linalg.slogdet(jacobian).logabsdet
        torch.testing.assert_close(log_q[n], expected)
    if kind == "iaf":  # a value the flow did not produce: the density inverts the steps
        torch.testing.assert_close(q.log_prob(z.clone()), log_q)
    assert tuple(q.event_shape) == (k,) and q.has_rsample


@pytest.mark.parametrize("kind", sorted(FLOWS))
def test_reparameterized_gradients_reach_encoder_and_flow(kind):
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,), posterior=FLOWS[kind](2, 3, num_steps=2))
    assert vae.encoder.context_dim == 3
    x = (torch.rand(10, 6) < 0.4).float()
    MeanFieldELBO().differentiable_loss(vae.model, vae.guide, x).backward()
    for module in (vae.encoder, vae.posterior, vae.decoder):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_default_posterior_keeps_the_vae_and_its_parameter_names():
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))
    assert isinstance(vae.posterior, DiagonalGaussian) and vae.encoder.context_dim == 0
    assert set(vae.state_dict()) == {
        "encoder.net.0.weight", "encoder.net.0.bias", "encoder.net.2.weight", "encoder.net.2.bias",
        "decoder.0.weight", "decoder.0.bias", "decoder.2.weight", "decoder.2.bias",
    }  # fmt: skip
    with pytest.raises(InputError, match="context of width 3"):
        VAE(Bernoulli(6), latent_dim=2, posterior=IAFPosterior(2, 3), encoder=GaussianEncoder(6, (5,), 2))


def _quadrature_log_px(vae, x):
    with torch.no_grad():
        grid = torch.linspace(-12, 12, 6001, dtype=x.dtype)[:, None]
        log_joint = vae.likelihood(vae.decoder(grid)).log_prob(x[:, None, :]) + vae.prior(x).log_prob(grid)
        return torch.logsumexp(log_joint, -1) + math.log(grid[1, 0] - grid[0, 0])


@pytest.mark.filterwarnings("ignore:ConditionalAutoRegressiveNN input_dim = 1")
@pytest.mark.parametrize("kind", sorted(FLOWS))
def test_importance_sampling_with_a_flow_guide_gives_the_exact_log_marginal(kind):
    """The weights p(x, z)/q(z|x) average to p(x) only if q's density is right: log p(x) of a
    one-latent VAE by quadrature, against L_K with the flow guide, within 4 standard errors;
    the ELBO lies below it."""
    torch.manual_seed(1)
    vae = VAE(Bernoulli(6), latent_dim=1, hidden=(5,), posterior=FLOWS[kind](1, 3, num_steps=2)).double()
    _perturb(vae.posterior, 0.3)
    x = (torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) < 0.4).double()
    exact = _quadrature_log_px(vae, x)
    lm = log_marginal(vae.model, vae.guide, x, num_particles=4000)
    assert ((lm.value - exact).abs() < 4 * lm.standard_error + 1e-3).all()
    assert (elbo(vae.model, vae.guide, x, num_particles=200) < exact).all()


def test_fit_trains_a_vae_with_an_iaf_guide():
    x = (torch.rand(60, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(8,), posterior=IAFPosterior(2, 4))
    before = elbo(vae.model, vae.guide, x, num_particles=20).mean()
    result = fit(
        vae.model, vae.guide, x, validation=x[:20], epochs=15, batch_size=20, lr=1e-2, progress=False
    )
    after = elbo(vae.model, vae.guide, x, num_particles=20).mean()
    assert math.isfinite(result.last("val_elbo")) and after > before
    assert iwae(vae.model, vae.guide, x, num_particles=20).mean() > after - 0.05
