"""Per-datapoint log densities from traces, against exact answers."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.errors import InputError
from pyro_vae.infer import log_terms, max_plate_nesting
from pyro_vae.models import LinearGaussian
from pyro_vae.train import rate_distortion
from tests.conftest import standard_error


def _lg(seed=0):
    torch.manual_seed(seed)
    m = LinearGaussian(4, 2).double()
    x = torch.randn(12, 4, dtype=torch.float64)
    return m, x


def test_exact_posterior_guide_gives_log_marginal_for_every_particle():
    m, x = _lg()
    m.set_guide_to_posterior()
    terms = log_terms(m.model, m.guide, x, num_particles=7)
    assert terms.log_weight.shape == (7, 12)
    torch.testing.assert_close(terms.log_weight, m.log_marginal(x).expand(7, 12))


def test_mean_log_weight_is_the_exact_elbo_within_standard_errors():
    m, x = _lg()
    with torch.no_grad():
        m.recognition.weight.normal_(0, 0.3)
    lw = log_terms(m.model, m.guide, x, num_particles=4000).log_weight.detach()
    err = (lw.mean(0) - m.exact_elbo(x).detach()).abs()
    assert (err < 4 * standard_error(lw)).all()


def test_rate_plus_distortion_is_minus_elbo_and_rate_matches_kl():
    m, x = _lg()
    rd = rate_distortion(m.model, m.guide, (x,), num_particles=4000, batch_size=5)
    torch.testing.assert_close(rd.elbo, -(rd.rate + rd.distortion))
    q = m.guide_distribution(x)
    prior = dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    kl = torch.distributions.kl_divergence(q, prior).detach()
    # the rate's per-sample sd is O(1) here; 4000 particles give an SE below 0.05
    assert (rd.rate - kl).abs().max() < 0.15


class _HandVAE(nn.Module):
    """A user's own program: bare pyro.param for the decoder, a module for the encoder."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(5, 4)

    def model(self, x):
        w = pyro.param("w", torch.randn(2, 5) * 0.1)
        with pyro.plate("obs", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ w).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("obs", x.shape[0]):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(h[..., :2], nn.functional.softplus(h[..., 2:])).to_event(1))


def test_user_program_matches_hand_written_log_weights():
    torch.manual_seed(0)
    prog = _HandVAE()
    x = (torch.rand(6, 5) < 0.5).float()
    pyro.set_rng_seed(1)
    terms = log_terms(prog.model, prog.guide, x, num_particles=3, plate_name="obs", nesting=1)
    pyro.set_rng_seed(1)
    h = prog.enc(x)
    q = dist.Normal(h[..., :2], nn.functional.softplus(h[..., 2:])).to_event(1)
    z = q.sample((3,))
    w = pyro.param("w")
    expected = (
        dist.Bernoulli(logits=z @ w).to_event(1).log_prob(x)
        + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        - q.log_prob(z)
    )
    torch.testing.assert_close(terms.log_weight, expected)


def test_missing_plate_and_global_latents_are_reported():
    m, x = _lg()
    with pytest.raises(InputError, match="no plate named 'obs'"):
        log_terms(m.model, m.guide, x, plate_name="obs")

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(InputError, match="'mu' is outside the plate 'data'"):
        log_terms(model, guide, torch.zeros(3))


def test_max_plate_nesting_counts_nested_plates():
    def model():
        with pyro.plate("a", 2, dim=-1), pyro.plate("b", 3, dim=-2):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(3, 2))

    assert max_plate_nesting(model, lambda: None) == 2
