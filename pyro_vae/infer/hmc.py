"""Hamiltonian Monte Carlo transitions for many independent chains at once, with a step size
per chain (or per group of chains) adapted toward a target acceptance rate.

A chain's state is a position :math:`u \\in \\mathbb R^D` with its potential energy
:math:`U(u) = -\\log \\pi(u)` (up to a constant) and :math:`\\nabla U(u)`; positions have shape
``(K, B, D)`` and energies ``(K, B)``, every one of the :math:`K B` chains independent. One
transition draws a momentum :math:`p \\sim \\mathcal N(0, I)`, runs ``num_leapfrog`` leapfrog
steps of size :math:`\\epsilon`,

.. math::
    p \\leftarrow p - \\tfrac\\epsilon2 \\nabla U(u), \\quad u \\leftarrow u + \\epsilon p, \\quad
    p \\leftarrow p - \\tfrac\\epsilon2 \\nabla U(u),

and accepts the end point with probability :math:`\\min(1, e^{H(u, p) - H(u', p')})`,
:math:`H = U + \\tfrac12 \\|p\\|^2` (Metropolis correction) [1]. The leapfrog map is
volume-preserving and reversible (with the momentum flipped), so the transition leaves
:math:`\\pi` invariant for any fixed :math:`\\epsilon` and number of steps.

References:
    [1] Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of Markov Chain Monte Carlo.
    [2] Wu, Burda, Salakhutdinov & Grosse (2017), "On the quantitative analysis of
        decoder-based generative models", ICLR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError

Potential = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]]
"""``potential(u)`` for ``u`` of shape ``(K, B, D)``: the energy :math:`U(u)` ``(K, B)``, its
gradient ``(K, B, D)``, and extra per-chain values ``(K, B)`` that travel with the state
(log densities a caller wants at the accepted positions)."""


@dataclass(frozen=True, kw_only=True)
class HMCOptions:
    """HMC settings.

    :ivar num_leapfrog: leapfrog steps per transition.
    :ivar step_size: the initial step size :math:`\\epsilon`.
    :ivar target_accept: the acceptance rate the adaptation steers toward (0.65 as in [2]).
    :ivar adapt: adapt :math:`\\epsilon` after every transition,
        :math:`\\log \\epsilon \\mathrel{+}= \\kappa\\,(a - a^*)` with :math:`a` the acceptance
        probability, :math:`a^*` = ``target_accept`` and :math:`\\kappa` = ``adapt_rate`` (a
        smooth form of the multiplicative rule of [2]).
    :ivar shared_step_size: one step size for all chains of a datapoint (adapted on their mean
        acceptance rate) rather than one per chain (the default: a chain that lags behind a
        moving annealing target, where a step size right for the others makes it reject, gets
        a smaller step of its own; measured in ``benchmarks/ais_eval.py``).
    :ivar min_step_size, max_step_size: the range the adaptation keeps :math:`\\epsilon` in.
    """

    num_leapfrog: int = 5
    step_size: float = 0.1
    target_accept: float = 0.65
    adapt: bool = True
    shared_step_size: bool = False
    adapt_rate: float = 1.0
    min_step_size: float = 1e-4
    max_step_size: float = 10.0

    def validate(self) -> None:
        check_positive_int(self.num_leapfrog, "num_leapfrog")
        if not 0 < self.target_accept < 1:
            raise InputError(f"target_accept must lie in (0, 1), got {self.target_accept}")
        if not 0 < self.min_step_size <= self.step_size <= self.max_step_size:
            raise InputError(
                f"need 0 < min_step_size <= step_size <= max_step_size, got {self.min_step_size}, "
                f"{self.step_size}, {self.max_step_size}"
            )
        if not self.adapt_rate > 0:
            raise InputError(f"adapt_rate must be positive, got {self.adapt_rate}")


@dataclass(frozen=True)
class HMCState:
    """Positions ``(K, B, D)`` with their energies ``(K, B)``, gradients and extra values."""

    position: torch.Tensor
    energy: torch.Tensor
    gradient: torch.Tensor
    extras: tuple[torch.Tensor, ...] = ()

    @classmethod
    def at(cls, position: torch.Tensor, potential: Potential) -> HMCState:
        energy, gradient, extras = potential(position)
        return cls(position, energy, gradient, extras)


def _where(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.reshape(mask.shape + (1,) * (new.dim() - mask.dim())), new, old)


def hmc_transition(
    state: HMCState, potential: Potential, step_size: torch.Tensor, num_leapfrog: int
) -> tuple[HMCState, torch.Tensor]:
    """One HMC transition of every chain (see the module docstring): the new state and the
    acceptance probability :math:`\\min(1, e^{-\\Delta H})` per chain, ``(K, B)``.

    ``step_size`` broadcasts against the energies (``(K, B)``, ``(1, B)`` or a number). A
    trajectory that leaves the finite numbers is stopped where it is and rejected.
    """
    eps = torch.as_tensor(step_size, dtype=state.position.dtype, device=state.position.device)
    eps = eps.expand(state.energy.shape).unsqueeze(-1)
    momentum0 = torch.randn_like(state.position)
    u, grad = state.position, state.gradient
    p = momentum0 - 0.5 * eps * grad
    diverged = torch.zeros_like(state.energy, dtype=torch.bool)
    energy, extras = state.energy, state.extras
    for step in range(num_leapfrog):
        proposal = u + eps * p
        bad = ~torch.isfinite(proposal).all(-1)
        diverged = diverged | bad
        u = _where(bad, u, proposal)
        energy, grad, extras = potential(u)
        bad = ~(torch.isfinite(energy) & torch.isfinite(grad).all(-1))
        diverged = diverged | bad
        grad = _where(bad, torch.zeros_like(grad), grad)
        p = p - (eps if step < num_leapfrog - 1 else 0.5 * eps) * grad
    h0 = state.energy + 0.5 * (momentum0**2).sum(-1)
    h1 = energy + 0.5 * (p**2).sum(-1)
    log_accept = torch.nan_to_num(h0 - h1, nan=-torch.inf).clamp(max=0.0)
    log_accept = torch.where(diverged, torch.full_like(log_accept, -torch.inf), log_accept)
    accept = torch.rand_like(log_accept).log() < log_accept
    new = HMCState(
        _where(accept, u, state.position),
        torch.where(accept, energy, state.energy),
        _where(accept, grad, state.gradient),
        tuple(torch.where(accept, e, e0) for e, e0 in zip(extras, state.extras, strict=True)),
    )
    return new, log_accept.exp()


def initial_step_size(options: HMCOptions, like: torch.Tensor) -> torch.Tensor:
    """The starting step sizes for energies shaped ``like`` (``(K, B)``): ``(1, B)`` when shared
    over the chains of a datapoint, ``(K, B)`` otherwise; dtype and device of ``like``."""
    shape = (1, like.shape[1]) if options.shared_step_size else like.shape
    return torch.full(shape, options.step_size, dtype=like.dtype, device=like.device)


def adapt_step_size(step_size: torch.Tensor, accept_prob: torch.Tensor, options: HMCOptions) -> torch.Tensor:
    """The step sizes after a transition with acceptance probabilities ``accept_prob``
    ``(K, B)``: :math:`\\epsilon \\exp(\\kappa (a - a^*))`, larger where the (chain-mean, when
    shared) rate exceeds the target and smaller where it falls short [2], clamped to the
    options' range; unchanged without ``adapt``."""
    if not options.adapt:
        return step_size
    rate = accept_prob.mean(0, keepdim=True) if step_size.shape[0] == 1 else accept_prob
    factor = torch.exp(options.adapt_rate * (rate - options.target_accept))
    return (step_size * factor).clamp(options.min_step_size, options.max_step_size)
