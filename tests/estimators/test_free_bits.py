"""Free bits: the ELBO above the floor, no pull toward the prior below it (closed forms)."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.errors import InputError
from pyro_vae.estimators import FreeBitsELBO
from pyro_vae.infer import MeanFieldELBO
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit

N = 12
X = torch.linspace(-1.0, 1.0, N, dtype=torch.float64).unsqueeze(-1)


def model(x, num_data=None):
    """z ~ N(0, I_2), x ~ N(z_0, 1): the likelihood does not read z_1."""
    with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(z[..., :1], 1.0).to_event(1), obs=x)


def guide(x, num_data=None):
    """q(z | x) = N((a_0 x + b_0, b_1), diag(s^2)), a per-dimension loc and scale."""
    a = pyro.param("a", torch.tensor(2.0, dtype=torch.float64))
    b = pyro.param("b", torch.tensor([1.5, 0.1], dtype=torch.float64))
    s = pyro.param("s", torch.tensor([0.5, 0.9], dtype=torch.float64))
    with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
        loc = torch.cat([a * x + b[0], b[1].expand(x.shape)], -1)
        pyro.sample("z", dist.Normal(loc, s).to_event(1))


def _kl_per_dimension():
    """Closed-form KL(q(z_j | x_n) || N(0, 1)) averaged over the data, per dimension."""
    a, b, s = (pyro.param(n).detach() for n in ("a", "b", "s"))
    loc = torch.cat([a * X + b[0], b[1].expand(X.shape)], -1)
    return (-s.log() + (s**2 + loc**2) / 2 - 0.5).mean(0)


def _loss_and_grads(loss, **kw):
    pyro.set_rng_seed(3)
    value = loss.loss_and_grads(model, guide, X, **kw)
    grads = {n: pyro.param(n).unconstrained().grad.clone() for n in ("a", "b", "s")}
    for n in ("a", "b", "s"):
        pyro.param(n).unconstrained().grad = None
    return value, grads


def test_equals_the_elbo_when_every_group_is_above_the_floor():
    guide(X)
    kl = _kl_per_dimension()
    floor = 0.5 * kl.min().item()
    assert kl.min() > floor
    fb, fb_grads = _loss_and_grads(FreeBitsELBO(floor, num_particles=3))
    elbo, elbo_grads = _loss_and_grads(MeanFieldELBO(num_particles=3))
    assert fb == pytest.approx(elbo, rel=1e-12)
    for n in fb_grads:
        assert torch.allclose(fb_grads[n], elbo_grads[n], rtol=1e-10, atol=1e-12)


def test_a_group_below_the_floor_gets_no_gradient_and_costs_the_floor():
    guide(X)
    kl = _kl_per_dimension()
    floor = 1.0
    assert kl[0] > floor > kl[1]  # dimension 0 above, dimension 1 below
    fb, fb_grads = _loss_and_grads(FreeBitsELBO(floor), num_data=3 * N)  # a minibatch of a 3N data set
    elbo, elbo_grads = _loss_and_grads(MeanFieldELBO(), num_data=3 * N)
    # the loss: the ELBO's, with N * (floor - KL_1) more for the group below the floor
    assert fb == pytest.approx(elbo + 3 * N * (floor - kl[1].item()), rel=1e-10)
    # z_1 enters only through its KL, so its loc and scale have zero gradient under free bits ...
    assert fb_grads["b"][1] == 0 and fb_grads["s"][1] == 0
    # ... while the ELBO's is the KL's closed-form gradient: d/db_1 = N b_1, d/ds_1 = N (s_1 - 1/s_1)
    b1, s1 = pyro.param("b")[1].item(), pyro.param("s")[1].item()
    assert elbo_grads["b"][1].item() == pytest.approx(3 * N * b1, rel=1e-10)
    assert elbo_grads["s"][1].item() == pytest.approx(3 * N * (s1 - 1 / s1), rel=1e-10)
    # dimension 0 is above the floor: the same gradient as the ELBO's
    assert torch.allclose(fb_grads["a"], elbo_grads["a"], rtol=1e-10)
    assert torch.allclose(fb_grads["b"][0], elbo_grads["b"][0], rtol=1e-10)


def test_per_site_groups_and_checks():
    guide(X)
    kl = _kl_per_dimension()
    floor = kl.sum().item() + 1.0  # the whole site below the floor
    fb, grads = _loss_and_grads(FreeBitsELBO(floor, per_dimension=False))
    elbo, _ = _loss_and_grads(MeanFieldELBO())
    assert fb == pytest.approx(elbo + N * (floor - kl.sum().item()), rel=1e-10)
    assert grads["b"][1] == 0 and grads["s"][1] == 0  # z_1 only enters through the KL
    with pytest.raises(InputError, match="free bits"):
        FreeBitsELBO(-1.0)


def test_trains_a_library_vae_through_fit():
    """On the library's VAE, with a floor above every group's KL at the start, the loss is
    above the ELBO's for the same draws; it trains through fit like any loss."""
    x = (torch.rand(64, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    torch.manual_seed(0)
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(4,))
    pyro.set_rng_seed(1)
    fb = FreeBitsELBO(5.0).loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    assert fb > MeanFieldELBO().loss(vae.model, vae.guide, x) + 64 * 2 * 4.0
    result = fit(vae.model, vae.guide, x, loss=FreeBitsELBO(0.5), epochs=3, batch_size=16, progress=False)
    assert len(result.history) == 3 and all(
        torch.isfinite(torch.tensor(h["train_objective"])) for h in result.history
    )
