"""The HMC transition kernel on its own: it keeps its stationary distribution, rejects
diverging trajectories, and its step size adapts toward the target acceptance rate."""

import math

import pytest
import torch
from scipy import stats

from pyro_vae.errors import InputError
from pyro_vae.infer.hmc import HMCOptions, HMCState, adapt_step_size, hmc_transition, initial_step_size


def _gaussian(cov: torch.Tensor, mean: torch.Tensor):
    """The potential of N(mean, cov) for positions (K, B, D), with log pi as an extra."""
    precision = torch.linalg.inv(cov)

    def potential(u):
        d = u - mean
        energy = 0.5 * torch.einsum("kbi,ij,kbj->kb", d, precision, d)
        return energy, d @ precision, (-energy,)

    return potential


def test_transitions_keep_a_correlated_gaussian_stationary():
    """4000 chains started at exact draws of a correlated 3-d Gaussian: after 15 transitions
    the means and variances match the target within 4 standard errors and a KS test of a
    projection does not reject (fixed seed)."""
    torch.manual_seed(0)
    dtype = torch.float64
    a = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [-0.3, 0.4, 0.3]], dtype=dtype)
    cov, mean = a @ a.T, torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    k = 4000
    start = mean + torch.randn(k, 1, 3, dtype=dtype) @ a.T
    potential = _gaussian(cov, mean)
    state = HMCState.at(start, potential)
    accepts = []
    for _ in range(15):
        state, accept = hmc_transition(state, potential, torch.tensor(0.12, dtype=dtype), 4)
        accepts.append(accept.mean().item())
    z = state.position[:, 0]
    se_mean = cov.diagonal().sqrt() / k**0.5
    assert ((z.mean(0) - mean).abs() < 4 * se_mean).all()
    se_var = cov.diagonal() * (2 / (k - 1)) ** 0.5
    assert ((z.var(0) - cov.diagonal()).abs() < 4 * se_var).all()
    direction = torch.tensor([1.0, 1.0, -1.0], dtype=dtype)
    projected = (z - mean) @ direction / (direction @ cov @ direction).sqrt()
    assert stats.kstest(projected.numpy(), "norm").pvalue > 0.01
    assert 0.3 < sum(accepts) / len(accepts) < 1.0  # the chains moved
    torch.testing.assert_close(state.extras[0], -state.energy)  # extras follow the accepted state


def test_chains_far_from_the_target_move_to_it():
    """Chains started at one point of a 2-d Gaussian reach its moments (the kernel mixes,
    not only keeps): 60 transitions from u = 3, mean within 4 SE of 0."""
    torch.manual_seed(1)
    dtype = torch.float64
    potential = _gaussian(torch.eye(2, dtype=dtype), torch.zeros(2, dtype=dtype))
    state = HMCState.at(torch.full((2000, 1, 2), 3.0, dtype=dtype), potential)
    for _ in range(60):
        state, _ = hmc_transition(state, potential, 0.5, 3)
    assert (state.position.mean((0, 1)).abs() < 4 / 2000**0.5).all()


def test_a_diverging_trajectory_is_rejected_and_the_state_kept():
    dtype = torch.float64

    def potential(u):  # finite at 0, infinite elsewhere
        energy = torch.where(u.abs().sum(-1) < 1e-12, 0.0, math.inf).to(dtype)
        return energy, torch.zeros_like(u), ()

    start = torch.zeros(5, 2, 3, dtype=dtype)
    state, accept = hmc_transition(HMCState.at(start, potential), potential, 0.1, 3)
    assert torch.equal(state.position, start)
    assert (accept == 0).all()


def test_step_size_adapts_toward_the_target_acceptance_rate():
    """Shared over chains: one step size per datapoint, which settles where the acceptance
    rate is near the target (0.65) for a standard Gaussian target in 5 dims."""
    torch.manual_seed(2)
    dtype = torch.float64
    options = HMCOptions(
        num_leapfrog=3, step_size=0.01, target_accept=0.65, shared_step_size=True, adapt_rate=0.2
    )
    potential = _gaussian(torch.eye(5, dtype=dtype), torch.zeros(5, dtype=dtype))
    state = HMCState.at(torch.randn(64, 2, 5, dtype=dtype), potential)
    eps = initial_step_size(options, state.energy)
    assert eps.shape == (1, 2) and eps.dtype == dtype
    rates = []
    for _ in range(300):
        state, accept = hmc_transition(state, potential, eps, options.num_leapfrog)
        eps = adapt_step_size(eps, accept, options)
        rates.append(accept.mean(0))
    late = torch.stack(rates[-100:]).mean(0)
    assert (eps > 0.1).all()  # grew from 0.01
    assert ((late - 0.65).abs() < 0.1).all()
    per_chain = initial_step_size(HMCOptions(), state.energy)
    assert per_chain.shape == (64, 2)
    frozen = adapt_step_size(per_chain, torch.zeros(64, 2, dtype=dtype), HMCOptions(adapt=False))
    assert torch.equal(frozen, per_chain)


@pytest.mark.parametrize(
    "options",
    [
        HMCOptions(num_leapfrog=0),
        HMCOptions(target_accept=1.0),
        HMCOptions(step_size=-0.1),
        HMCOptions(adapt_rate=0.0),
    ],
)
def test_bad_options_are_refused(options):
    with pytest.raises(InputError):
        options.validate()
