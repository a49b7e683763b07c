"""MeanFieldELBO against Pyro's TraceMeanField_ELBO and closed forms."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyro_vae.errors import InputError
from pyro_vae.infer import MeanFieldELBO
from pyro_vae.likelihoods import Gaussian
from pyro_vae.models import VAE


def _grads(loss, vae, *args, **kw):
    vae.zero_grad()
    pyro.set_rng_seed(3)
    value = loss.differentiable_loss(vae.model, vae.guide, *args, **kw)
    value.backward()
    return value.detach(), {n: p.grad.clone() for n, p in vae.named_parameters()}


@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
def test_same_value_and_gradients_as_trace_mean_field_elbo(kl_weight):
    torch.manual_seed(0)
    vae = VAE(Gaussian(6), latent_dim=3, hidden=(5,), num_classes=2)
    x, y = torch.randn(10, 6), torch.arange(10) % 2
    ours, g1 = _grads(MeanFieldELBO(), vae, x, y, num_data=50, kl_weight=kl_weight)
    ref, g2 = _grads(TraceMeanField_ELBO(), vae, x, y, num_data=50, kl_weight=kl_weight)
    torch.testing.assert_close(ours, ref)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], msg=name)


def test_closed_form_for_a_normal_normal_model():
    """z ~ N(0,1), x|z ~ N(z, 1), q = N(m, s): the ELBO is known in closed form, and with
    analytic KL only log p(x|z) is random; its average over many particles must match."""
    m, s, x = torch.tensor(0.3), torch.tensor(0.6), torch.tensor(1.1)

    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide():
        pyro.sample("z", dist.Normal(m, s))

    exact = (
        -0.5 * torch.log(torch.tensor(2 * torch.pi))
        - 0.5 * ((x - m) ** 2 + s**2)
        - 0.5 * (m**2 + s**2 - 1 - 2 * torch.log(s))
    )
    k = 20000
    estimate = -MeanFieldELBO(num_particles=k).loss(model, guide)
    # the only random term is -(x - z)^2 / 2 with x - z ~ N(x - m, s^2): Var = (2 s^4 + 4 (x-m)^2 s^2) / 4
    sd = 0.5 * (2 * s**4 + 4 * (x - m) ** 2 * s**2).sqrt()
    assert abs(estimate - exact.item()) < 4 * sd.item() / k**0.5


def test_masked_sites_contribute_nothing():
    def model():
        with poutine.mask(mask=False):
            pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    def guide():
        with poutine.mask(mask=False):
            pyro.sample("z", dist.Normal(5.0, 0.1))

    assert -MeanFieldELBO().loss(model, guide) == pytest.approx(
        dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.0)).item()
    )


def test_non_reparameterized_guide_site_gets_a_clear_error():
    def model():
        c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(c.float(), 1.0), obs=torch.tensor(0.5))

    def guide():
        probs = pyro.param("probs", torch.ones(3) / 3, constraint=dist.constraints.simplex)
        pyro.sample("c", dist.Categorical(probs))

    with pytest.raises(InputError, match="'c'.*Trace_ELBO"):
        MeanFieldELBO().loss(model, guide)
