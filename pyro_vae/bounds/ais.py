"""Annealed importance sampling (AIS) of :math:`\\log p(x)` per datapoint, with HMC transitions,
for any Pyro model/guide pair with continuous latents."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
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


AIS_MAX_ROWS = 10_000
"""Chain-rows per chunk by default (each carries gradients and HMC state: fewer than a bound's)."""


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
    beta: float,
    *,
    plan: Any,
    space: LatentSpace,
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
class Anneal:
    """One block of chains: log-weights, mean acceptance probabilities and final step sizes
    ``(K, B)``, and the step size of every transition, ``(T - 1, B)`` (geometric mean over
    the chains)."""

    log_weights: torch.Tensor
    acceptance_rate: torch.Tensor
    step_size: torch.Tensor
    step_sizes: torch.Tensor


def anneal(
    make_potential: Callable[[float], Potential],
    start: torch.Tensor,
    betas: torch.Tensor,
    options: HMCOptions,
    *,
    pilot: int = 0,
    on_step: Callable[[], None] | None = None,
) -> Anneal:
    """Run AIS chains from ``start`` (``(K, B, D)``, exact draws of :math:`\\pi_{\\beta_0}`)
    along ``betas``: for :math:`t = 1, \\dots, T`,
    :math:`\\log w \\mathrel{+}= (\\beta_t - \\beta_{t-1})(\\log f_1 - \\log f_0)(z_{t-1})`,
    then (for :math:`t < T`) one HMC transition leaving :math:`\\pi_{\\beta_t}` invariant [1].
    With :math:`\\beta` running from 1 to 0 this is reverse AIS, whose
    :math:`E[w] = Z_0 / Z_1` [3].

    With ``pilot = P > 0`` (and ``options.adapt``) the first ``P`` chains of ``start`` are
    pilots: they adapt their step sizes during the run, and the other chains use, at every
    transition, the pilots' step size of that transition (geometric mean over the pilots, per
    datapoint). A chain moves by its own state alone, so the pilots' path is independent of
    the other chains and, given it, those chains see a fixed sequence of kernels: their
    :math:`E[w]` is exact. The pilots' weights are dropped from the result. With
    ``pilot = 0`` every chain adapts on its own past (``options.adapt``), or none does."""
    u = start
    k_all, rows = start.shape[:2]
    log_w = torch.zeros(k_all, rows, dtype=start.dtype, device=start.device)
    adapt = options.adapt
    own = initial_step_size(options, log_w[:pilot] if pilot and adapt else log_w)
    accept_sum = torch.zeros_like(log_w)
    used: list[torch.Tensor] = []
    num_steps = betas.shape[0] - 1
    for t in range(1, num_steps + 1):
        potential = make_potential(float(betas[t]))
        state = HMCState.at(u, potential)
        log_f0, log_f1 = state.extras
        log_w = log_w + (betas[t] - betas[t - 1]) * (log_f1 - log_f0)
        if t < num_steps:
            if pilot and adapt:
                follow = own.log().mean(0, keepdim=True).exp()  # the pilots' step, per datapoint
                step_size = torch.cat([own.expand(pilot, rows), follow.expand(k_all - pilot, rows)])
            else:
                step_size = own
            used.append(step_size[pilot:].log().mean(0).exp().expand(rows))
            state, accept = hmc_transition(state, potential, step_size, options.num_leapfrog)
            if adapt:
                own = adapt_step_size(own, accept[:pilot] if pilot else accept, options)
            accept_sum = accept_sum + accept
            u = state.position
        if on_step is not None:
            on_step()
    rate = accept_sum / (num_steps - 1) if num_steps > 1 else torch.full_like(accept_sum, math.nan)
    final = step_size if num_steps > 1 else torch.full_like(log_w, options.step_size)
    schedule = torch.stack(used) if used else log_w.new_zeros(0, rows)
    main = slice(pilot, None)
    return Anneal(log_w[main], rate[main], final.expand(k_all, rows)[main], schedule)


@dataclass(frozen=True)
class AISSettings:
    """The settings of a run of :func:`ais` (see there), checked by :meth:`validate`."""

    num_steps: int
    num_chains: int
    schedule: Any
    hmc: HMCOptions
    initial: str
    adaptation: str
    pilot_chains: int
    max_rows: int
    data_chunk: int | None
    plate_name: str | None
    progress: bool

    def validate(self) -> None:
        """Refuse bad settings before any work."""
        check_positive_int(self.num_steps, "num_steps")
        check_positive_int(self.num_chains, "num_chains")
        check_positive_int(self.pilot_chains, "pilot_chains")
        check_positive_int(self.max_rows, "max_rows")
        if self.data_chunk is not None:
            check_positive_int(self.data_chunk, "data_chunk")
        if not isinstance(self.hmc, HMCOptions):
            raise InputError(f"hmc must be an HMCOptions, got {type(self.hmc).__name__}")
        self.hmc.validate()
        if self.initial not in ("guide", "prior"):
            raise InputError(f"initial must be 'guide' or 'prior', got {self.initial!r}")
        if self.adaptation not in ("pilot", "online"):
            raise InputError(f"adaptation must be 'pilot' or 'online', got {self.adaptation!r}")
        if not hasattr(self.schedule, "betas"):
            raise InputError(
                "schedule must be a schedule object (SigmoidSchedule(), LinearSchedule()), "
                f"got {self.schedule!r}"
            )


def _starts(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    plan: Any,
    space: LatentSpace,
    initial: str,
    exact: torch.Tensor | None,
    k: int,
) -> torch.Tensor:
    """``k`` starting points per datapoint: the exact posterior draws ``exact`` (reverse AIS),
    or draws of :math:`f_0`."""
    if exact is not None:
        return exact.expand(k, -1, -1).clone()
    if initial == "guide":
        return draw_guide(model, guide, args, kwargs, plan=plan, space=space, k=k)
    return draw_prior(model, args, kwargs, plan=plan, space=space, k=k)


@dataclass(frozen=True)
class ChunkRun:
    """What :func:`ais_chunks` yields: the rows ``start:stop`` and the anneal of a block of
    their chains."""

    start: int
    stop: int
    result: Anneal
    mode: str = "vectorized"
    """How the chains ran: ``"vectorized"``, ``"sequential"`` (a program that does not
    broadcast) or ``"single"`` (one chain)."""


def ais_chunks(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    settings: AISSettings,
    *,
    reverse_from: torch.Tensor | None = None,
    desc: str = "AIS",
) -> Iterator[ChunkRun]:
    """The anneals of all chains of all rows, chunked so that one chunk holds at most
    ``max_rows`` chain-rows. ``reverse_from`` (``(1, N, D)``, exact posterior draws in the
    unconstrained space) runs reverse AIS from them instead of forward AIS. With adaptation
    ``"pilot"``, each block of chains runs with ``pilot_chains`` pilots (see :func:`anneal`)."""
    s = settings
    n = num_rows(args)
    plan = probe(model, guide, args, kwargs, s.plate_name)
    rows, chains = chunk_sizes(n, s.num_chains, s.max_rows)
    if plan.local_params or s.data_chunk is not None:
        rows = n if plan.local_params else min(n, s.data_chunk)  # type: ignore[type-var]
        chains = max(1, min(s.num_chains, s.max_rows // rows))
    blocks = [(b, min(b + rows, n)) for b in range(0, n, rows)]
    chain_blocks = [min(chains, s.num_chains - c) for c in range(0, s.num_chains, chains)]
    pilot = s.hmc.adapt and s.adaptation == "pilot"
    work = len(blocks) * len(chain_blocks) * s.num_steps
    bar = tqdm(total=work, disable=not s.progress, desc=desc, unit="step")
    try:
        for (start, stop), (chunk, chunk_kwargs) in zip(blocks, data_chunks(args, kwargs, rows), strict=True):
            run, _ = evaluate_particles(model, guide, chunk, chunk_kwargs, num_particles=1, plan=plan)
            space = LatentSpace.from_run(run, what="AIS")

            make = partial(
                _potential, model, guide, chunk, chunk_kwargs, plan=plan, space=space, initial=s.initial
            )
            exact = None if reverse_from is None else reverse_from[:, start:stop]
            starts = partial(_starts, model, guide, chunk, chunk_kwargs, plan, space, s.initial, exact)
            like = run.passes[0][1][space.names[0]].value
            betas = s.schedule.betas(s.num_steps, dtype=like.dtype, device=like.device)
            if reverse_from is not None:
                betas = betas.flip(0)
            for k in chain_blocks:
                p = s.pilot_chains if pilot else 0
                result = anneal(make, starts(p + k), betas, s.hmc, pilot=p, on_step=lambda: bar.update(1))
                mode = "single" if p + k == 1 else "vectorized" if plan.vectorize else "sequential"
                yield ChunkRun(start, stop, result, mode)
    finally:
        bar.close()


def collect(chunks: Iterator[ChunkRun], *, num_chains: int, num_steps: int, sign: float = 1.0) -> AISResult:
    """Assemble the chunks' anneals into one :class:`AISResult` (``sign=-1``: the estimate of
    reverse AIS, :math:`-\\log \\frac1M \\sum_m w_m`, from the reverse weights)."""
    log_w, accept, step = [], [], []
    rows: list[tuple[int, int]] = []
    mode = "single"
    for c in chunks:
        mode = c.mode
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
        estimate=BoundEstimate(sign * value, se, num_particles=num_chains, mode=mode),
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
    adaptation: Literal["pilot", "online"] = "pilot",
    pilot_chains: int = 4,
    max_rows: int | None = None,
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
    :math:`\\mathcal L_M` [4].

    The HMC step size adapts toward ``hmc.target_accept`` per datapoint. With
    ``adaptation="pilot"`` (the default) ``pilot_chains`` extra chains per datapoint run the
    path first, adapting as they go, and the ``num_chains`` chains of the estimate then use
    the pilot's step size at every transition: each transition is a fixed kernel, so
    :math:`E[w] = p(x)` holds exactly. With ``"online"`` the estimate's own chains adapt
    during the run as in [2] (per chain, or shared over a datapoint's chains with
    ``hmc.shared_step_size``): cheaper, but each transition then depends on the chains'
    past, which biases :math:`w` (upward for per-chain step sizes on a bimodal posterior,
    measured in ``benchmarks/ais_eval.py``). ``HMCOptions(adapt=False)`` keeps
    ``hmc.step_size`` throughout.

    The latents are the guide's sample sites (all continuous, every model latent among them,
    all inside the data plate), moved to unconstrained space by ``biject_to(support)`` with
    the log-Jacobian, concatenated per datapoint. Chains run as a vectorized particle
    dimension when the program broadcasts (one at a time otherwise), in chunks of at most
    ``max_rows`` chain-rows (``None``: :data:`AIS_MAX_ROWS`). Modules run in eval mode;
    gradients are taken with respect to the latents only, so no parameter, gradient or
    running statistic changes. dtype and
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
    settings = AISSettings(
        num_steps=num_steps,
        num_chains=num_chains,
        schedule=schedule,
        hmc=hmc,
        initial=initial,
        adaptation=adaptation,
        pilot_chains=pilot_chains,
        max_rows=AIS_MAX_ROWS if max_rows is None else max_rows,
        data_chunk=data_chunk,
        plate_name=plate_name,
        progress=progress,
    )
    settings.validate()
    check_rows(args)
    chunks = ais_chunks(model, guide, args, kwargs, settings)
    return collect(chunks, num_chains=num_chains, num_steps=num_steps)
