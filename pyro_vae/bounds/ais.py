"""Annealed importance sampling (AIS) of :math:`\\log p(x)` per datapoint, with HMC transitions,
for any Pyro model/guide pair with continuous latents."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from pyro_vae._checks import check_positive_int, check_rows
from pyro_vae.bounds.estimate import BoundEstimate
from pyro_vae.bounds.schedules import LinearSchedule, SigmoidSchedule
from pyro_vae.errors import InputError
from pyro_vae.infer.hmc import (
    HMCOptions,
    HMCState,
    Potential,
    adapt_step_size,
    hmc_transition,
    initial_step_size,
)
from pyro_vae.infer.log_mean_exp import StreamingLogMeanExp
from pyro_vae.infer.per_datapoint import chunk_sizes, data_chunks, evaluate_particles, num_rows, probe
from pyro_vae.infer.potential import LatentSpace, draw_guide, draw_prior, latent_terms

Schedule = LinearSchedule | SigmoidSchedule
DEFAULT_SCHEDULE = SigmoidSchedule()
DEFAULT_HMC = HMCOptions()


@dataclass(frozen=True)
class AISResult:
    """AIS per datapoint (tensors of shape ``(N,)`` unless said otherwise).

    :ivar estimate: :math:`\\log \\hat p(x) = \\log \\frac1M \\sum_m w_m` over the ``M`` chains,
        with the delta-method standard error :math:`\\mathrm{sd}(w) / (\\sqrt M\\, \\bar w)`.
    :ivar log_weights: ``(M, N)``, the chains' :math:`\\log w_m`.
    :ivar acceptance_rate: the HMC acceptance probability, averaged over chains and transitions.
    :ivar step_size: the final step size, averaged over the chains of a datapoint.
    :ivar log_weight_variance: the variance of :math:`\\log w` over chains (near 0 when the
        path is annealed slowly enough [2]).
    :ivar num_steps: :math:`T`, the number of intermediate distributions.
    """

    estimate: BoundEstimate
    log_weights: torch.Tensor
    acceptance_rate: torch.Tensor
    step_size: torch.Tensor
    log_weight_variance: torch.Tensor
    num_steps: int

    @property
    def value(self) -> torch.Tensor:
        return self.estimate.value

    @property
    def standard_error(self) -> torch.Tensor:
        return self.estimate.standard_error


def _potential(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    plan: Any,
    space: LatentSpace,
    beta: float,
    initial: str,
) -> Potential:
    """:math:`U_\\beta(u) = -[(1 - \\beta) \\log f_0 + \\beta \\log p(x, z) + \\log|J|]` at
    :math:`z = T(u)`, with :math:`f_0 = q(z \\mid x)` or :math:`p(z)`; gradients in ``u``
    only (the program's parameters get none). Extras: :math:`(\\log f_0, \\log p(x, z))`."""

    def potential(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            t = latent_terms(model, guide, args, kwargs, u, plan=plan, space=space)
            log_f0 = t.log_guide if initial == "guide" else t.log_prior
            log_f1 = t.log_joint
            energy = -((1 - beta) * log_f0 + beta * log_f1 + t.log_jacobian)
            (grad,) = torch.autograd.grad(energy.sum(), u)
        energy = torch.nan_to_num(energy.detach(), nan=math.inf)
        return energy, grad, (log_f0.detach(), log_f1.detach())

    return potential


@dataclass(frozen=True)
class _Anneal:
    log_weights: torch.Tensor
    acceptance_rate: torch.Tensor
    step_size: torch.Tensor


def anneal(
    make_potential: Callable[[float], Potential],
    start: torch.Tensor,
    betas: torch.Tensor,
    options: HMCOptions,
    on_step: Callable[[], None] | None = None,
) -> _Anneal:
    """Run AIS chains from ``start`` (``(K, B, D)``, exact draws of :math:`\\pi_{\\beta_0}`)
    along ``betas``: for :math:`t = 1, \\dots, T`,
    :math:`\\log w \\mathrel{+}= (\\beta_t - \\beta_{t-1})(\\log f_1 - \\log f_0)(z_{t-1})`,
    then (for :math:`t < T`) one HMC transition leaving :math:`\\pi_{\\beta_t}` invariant [1].
    With :math:`\\beta` running from 1 to 0 this is reverse AIS, whose
    :math:`E[w] = Z_0 / Z_1` [3]."""
    u = start
    log_w = torch.zeros(start.shape[:2], dtype=start.dtype, device=start.device)
    step_size = initial_step_size(options, log_w)
    accept_sum = torch.zeros_like(log_w)
    transitions = 0
    num_steps = betas.shape[0] - 1
    for t in range(1, num_steps + 1):
        beta = float(betas[t])
        potential = make_potential(beta)
        state = HMCState.at(u, potential)
        log_f0, log_f1 = state.extras
        log_w = log_w + (betas[t] - betas[t - 1]) * (log_f1 - log_f0)
        if t < num_steps:
            state, accept = hmc_transition(state, potential, step_size, options.num_leapfrog)
            step_size = adapt_step_size(step_size, accept, options)
            accept_sum = accept_sum + accept
            transitions += 1
            u = state.position
        if on_step is not None:
            on_step()
    rate = accept_sum / transitions if transitions else torch.full_like(accept_sum, math.nan)
    return _Anneal(log_w, rate, step_size.expand_as(log_w))


def check_ais_options(
    num_steps: int, num_chains: int, options: HMCOptions, initial: str, schedule: Any, max_rows: int
) -> None:
    """Refuse bad settings before any work."""
    check_positive_int(num_steps, "num_steps")
    check_positive_int(num_chains, "num_chains")
    check_positive_int(max_rows, "max_rows")
    if not isinstance(options, HMCOptions):
        raise InputError(f"hmc must be an HMCOptions, got {type(options).__name__}")
    options.validate()
    if initial not in ("guide", "prior"):
        raise InputError(f"initial must be 'guide' or 'prior', got {initial!r}")
    if not hasattr(schedule, "betas"):
        raise InputError(
            f"schedule must be a schedule object (SigmoidSchedule(), LinearSchedule()), got {schedule!r}"
        )


@dataclass(frozen=True)
class ChunkRun:
    """What :func:`ais_chunks` yields for one chunk: its rows, its arguments, the latent
    space, and the anneal of a block of chains."""

    start: int
    stop: int
    result: _Anneal


def ais_chunks(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_steps: int,
    num_chains: int,
    schedule: Any,
    options: HMCOptions,
    initial: str,
    max_rows: int,
    data_chunk: int | None,
    plate_name: str | None,
    progress: bool,
    reverse_from: torch.Tensor | None = None,
    desc: str = "AIS",
) -> Iterator[ChunkRun]:
    """The anneals of all chains of all rows, chunked so that one chunk holds at most
    ``max_rows`` chain-rows. ``reverse_from`` (``(1, N, D)``, exact posterior draws in the
    unconstrained space) runs reverse AIS from them instead of forward AIS."""
    n = num_rows(args)
    plan = probe(model, guide, args, kwargs, plate_name)
    rows, chains = chunk_sizes(n, num_chains, max_rows)
    if plan.local_params or data_chunk is not None:
        rows = n if plan.local_params else data_chunk
        chains = max(1, min(num_chains, max_rows // rows))
    blocks = [(s, min(s + rows, n)) for s in range(0, n, rows)]
    chain_blocks = [min(chains, num_chains - c) for c in range(0, num_chains, chains)]
    bar = tqdm(
        total=len(blocks) * len(chain_blocks) * num_steps, disable=not progress, desc=desc, unit="step"
    )
    try:
        for (start, stop), (chunk, chunk_kwargs) in zip(blocks, data_chunks(args, kwargs, rows), strict=True):
            run, _ = evaluate_particles(model, guide, chunk, chunk_kwargs, num_particles=1, plan=plan)
            space = LatentSpace.from_run(run, what="AIS")
            for k in chain_blocks:
                if reverse_from is not None:
                    u0 = reverse_from[:, start:stop].expand(k, -1, -1).clone()
                elif initial == "guide":
                    u0 = draw_guide(model, guide, chunk, chunk_kwargs, plan=plan, space=space, k=k)
                else:
                    u0 = draw_prior(model, chunk, chunk_kwargs, plan=plan, space=space, k=k)
                betas = schedule.betas(num_steps, dtype=u0.dtype, device=u0.device)
                if reverse_from is not None:
                    betas = betas.flip(0)

                def make(
                    beta: float, chunk: tuple = chunk, kw: dict = chunk_kwargs, sp: LatentSpace = space
                ) -> Potential:
                    return _potential(
                        model, guide, chunk, kw, plan=plan, space=sp, beta=beta, initial=initial
                    )

                yield ChunkRun(start, stop, anneal(make, u0, betas, options, on_step=lambda: bar.update(1)))
    finally:
        bar.close()


def collect(chunks: Iterator[ChunkRun], *, num_chains: int, num_steps: int, sign: float = 1.0) -> AISResult:
    """Assemble the chunks' anneals into one :class:`AISResult` (``sign=-1``: the estimate of
    reverse AIS, :math:`-\\log \\frac1M \\sum_m w_m`, from the reverse weights)."""
    log_w, accept, step = [], [], []
    rows: list[tuple[int, int]] = []
    for c in chunks:
        if rows and rows[-1] == (c.start, c.stop):
            log_w[-1].append(c.result.log_weights)
            accept[-1].append(c.result.acceptance_rate)
            step[-1].append(c.result.step_size)
        else:
            rows.append((c.start, c.stop))
            log_w.append([c.result.log_weights])
            accept.append([c.result.acceptance_rate])
            step.append([c.result.step_size])
    weights = torch.cat([torch.cat(w, 0) for w in log_w], 1)
    acc = StreamingLogMeanExp()
    acc.add(weights)
    value, se = acc.result()
    return AISResult(
        estimate=BoundEstimate(sign * value, se, num_particles=num_chains, mode="chains"),
        log_weights=weights,
        acceptance_rate=torch.cat([torch.cat(a, 0) for a in accept], 1).mean(0),
        step_size=torch.cat([torch.cat(s, 0) for s in step], 1).mean(0),
        log_weight_variance=weights.var(0) if num_chains > 1 else torch.full_like(value, math.nan),
        num_steps=num_steps,
    )


def ais(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_steps: int,
    num_chains: int = 16,
    schedule: Schedule = DEFAULT_SCHEDULE,
    hmc: HMCOptions = DEFAULT_HMC,
    initial: Literal["guide", "prior"] = "guide",
    max_rows: int = 10_000,
    data_chunk: int | None = None,
    plate_name: str | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> AISResult:
    """Annealed importance sampling of :math:`\\log p(x_n)` for every datapoint [1, 2].

    ``num_chains`` chains per datapoint start at :math:`z_0 \\sim f_0`, the guide
    :math:`q(z \\mid x)` (or the prior :math:`p(z)` with ``initial="prior"``), and follow the
    geometric path

    .. math::
        \\pi_t(z) \\propto f_0(z)^{1 - \\beta_t}\\, p(x, z)^{\\beta_t}, \\qquad
        0 = \\beta_0 < \\dots < \\beta_T = 1,

    with one HMC transition leaving :math:`\\pi_t` invariant at every intermediate
    :math:`\\beta_t` (:mod:`pyro_vae.infer.hmc`), accumulating

    .. math::
        \\log w = \\sum_{t=1}^T (\\beta_t - \\beta_{t-1})
        \\bigl[\\log p(x, z_{t-1}) - \\log f_0(z_{t-1})\\bigr],
        \\qquad E[w] = p(x).

    The estimate :math:`\\log \\frac1M \\sum_m w_m` is therefore a stochastic lower bound on
    :math:`\\log p(x)` (Jensen), tight as :math:`T \\to \\infty`; with :math:`T = 1` it is
    :math:`\\mathcal L_M` [4]. The HMC step size adapts toward ``hmc.target_accept`` during the
    run, per datapoint (``hmc.shared_step_size``) or per chain, as in [2]; this makes each
    transition depend on the chain's past, a small departure from the exact construction
    that ``HMCOptions(adapt=False)`` removes.

    The latents are the guide's sample sites (all continuous, every model latent among them,
    all inside the data plate), moved to unconstrained space by ``biject_to(support)`` with
    the log-Jacobian, concatenated per datapoint. Chains run as a vectorized particle
    dimension when the program broadcasts (one at a time otherwise), in chunks of at most
    ``max_rows`` chain-rows. Modules run in eval mode; gradients are taken with respect to
    the latents only, so no parameter, gradient or running statistic changes. dtype and
    device are those of the guide's values.

    :param schedule: :class:`~pyro_vae.bounds.schedules.SigmoidSchedule` (default, [3]) or
        :class:`~pyro_vae.bounds.schedules.LinearSchedule`.
    :param hmc: :class:`~pyro_vae.infer.hmc.HMCOptions`.
    :raises InputError: for bad settings, a discrete guide site, a model latent the guide
        does not propose, a latent outside the data plate.

    References:
        [1] Neal (2001), "Annealed importance sampling", Statistics and Computing 11.
        [2] Wu, Burda, Salakhutdinov & Grosse (2017), "On the quantitative analysis of
            decoder-based generative models", ICLR.
        [3] Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using
            bidirectional Monte Carlo", arXiv:1511.02543.
        [4] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """
    check_ais_options(num_steps, num_chains, hmc, initial, schedule, max_rows)
    check_rows(args)
    chunks = ais_chunks(
        model,
        guide,
        args,
        kwargs,
        num_steps=num_steps,
        num_chains=num_chains,
        schedule=schedule,
        options=hmc,
        initial=initial,
        max_rows=max_rows,
        data_chunk=data_chunk,
        plate_name=plate_name,
        progress=progress,
    )
    return collect(chunks, num_chains=num_chains, num_steps=num_steps)
