"""Bidirectional Monte Carlo on simulated data: the sandwich holds the exact log p(x) of the
linear-Gaussian model and narrows as the number of steps grows."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.bounds import bdmc
from pyro_vae.errors import InputError
from pyro_vae.infer import simulate
from pyro_vae.infer.hmc import HMCOptions
from pyro_vae.models import LinearGaussian


def _lg(perturb: float, seed: int = 0):
    torch.manual_seed(seed)
    m = LinearGaussian(4, 2).double()
    m.set_guide_to_posterior()
    with torch.no_grad():
        m.recognition.weight.add_(perturb * torch.randn_like(m.recognition.weight))
    return m


def test_sandwich_holds_the_exact_value_and_narrows_with_steps():
    """lower <= exact <= upper on the data-set mean within 3 standard errors (of the chains,
    summed over datapoints), at 5 and 150 steps; the gap upper - lower shrinks."""
    m = _lg(1.0)
    template = torch.zeros(4, 4, dtype=torch.float64)
    gaps = []
    for steps in (5, 150):
        with pyro.validation_enabled(False):
            r = bdmc(
                m.model,
                m.guide,
                template,
                num_steps=steps,
                num_chains=16,
                hmc=HMCOptions(num_leapfrog=1, step_size=0.3),
            )
        (x,) = r.data
        exact = m.log_marginal(x).detach().mean()
        se_lower = (r.forward.standard_error**2).sum().sqrt() / 4
        se_upper = (r.reverse.standard_error**2).sum().sqrt() / 4
        assert r.lower.mean() <= exact + 3 * se_lower
        assert exact <= r.upper.mean() + 3 * se_upper
        gaps.append(r.gap.mean().item())
        s = r.summary()
        assert s["num_data"] == 4 and s["gap"] == pytest.approx(r.gap.mean().item())
    assert gaps[1] < gaps[0]
    assert gaps[0] > 0.1  # 5 steps: a real gap to close


def test_simulated_data_follow_the_model():
    """The simulated x has the template's shape, differs from it, and z is the latent that
    generated it: x - W z - b is the model's noise (mean 0, variance psi within 4 SE)."""
    m = _lg(0.0)
    n = 3000
    (x,), latents = simulate(m.model, (torch.zeros(n, 4, dtype=torch.float64),), {})
    g = m.generative
    assert x.shape == (n, 4) and x.dtype == torch.float64 and not torch.equal(x, torch.zeros_like(x))
    noise = (x - latents["z"] @ g.weight.T - g.bias).detach()
    psi = g.noise_variance.detach()
    assert (noise.mean(0).abs() < 4 * (psi / n).sqrt()).all()
    assert ((noise.var(0) - psi).abs() < 4 * psi * (2 / n) ** 0.5).all()


def test_reverse_chain_starts_at_the_simulated_latent():
    """With the exact posterior as guide every forward and reverse weight is exact, so the
    sandwich has zero width at one step."""
    m = _lg(0.0)
    r = bdmc(m.model, m.guide, torch.zeros(3, 4, dtype=torch.float64), num_steps=2, num_chains=4)
    exact = m.log_marginal(r.data[0]).detach()
    torch.testing.assert_close(r.lower, exact, atol=1e-9, rtol=0)
    torch.testing.assert_close(r.upper, exact, atol=1e-9, rtol=0)
    assert set(r.latents) == {"z"}


def test_a_model_that_observes_no_argument_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x + 1)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, 1.0))

    with pytest.raises(InputError, match="observe its positional data"):
        bdmc(model, guide, torch.zeros(3), num_steps=2)
    with pytest.raises(InputError, match="num_steps"):
        bdmc(model, guide, torch.zeros(3), num_steps=0)
