"""Per-datapoint log densities of any model/guide pair, for evaluation: the one path every
bound, diagnostic and metric reads, chunked over data and over particles."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from pyro_vae._checks import check_positive_int, check_rows, data_rows
from pyro_vae.errors import InputError
from pyro_vae.infer.modes import frozen_evaluation
from pyro_vae.infer.particles import ParticleRun, ProgramPlan, plan_program, run_particles
from pyro_vae.infer.terms import Terms, collect_terms

LogTerms = Terms
"""Per-datapoint log densities (the name evaluation code has always used)."""


def max_plate_nesting(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> int:
    """Number of batch dimensions the program's plates use (one probe; see
    :func:`~pyro_vae.infer.particles.plan_program`: no draw, running statistic or parameter
    changes)."""
    return plan_program(model, guide, args, kwargs).nesting


num_rows = data_rows
"""Datapoints in the positional data: rows of the first argument, a tensor."""


def rows_of(args: tuple, start: int, stop: int) -> tuple:
    """Rows ``start:stop`` of every positional tensor with one row per datapoint; other
    arguments (a configuration object, a scalar) pass through unchanged."""
    n = num_rows(args)
    return tuple(
        a[start:stop] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n else a for a in args
    )


def take_rows(args: tuple, index: torch.Tensor) -> tuple:
    """The rows ``index`` of every positional tensor with one row per datapoint; other
    arguments pass through unchanged (as in :func:`rows_of`)."""
    n = num_rows(args)
    return tuple(
        a[index] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n else a for a in args
    )


def evaluate_particles(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    plan: ProgramPlan,
    analytic_kl: bool = False,
    vectorize: bool | None = None,
) -> tuple[ParticleRun, Terms]:
    """One evaluation run and its per-datapoint terms of the true (unscaled) model, with
    modules in eval mode and without gradients (see :func:`log_terms`)."""
    with frozen_evaluation():
        run = run_particles(
            model, guide, args, kwargs, plan=plan, num_particles=num_particles, vectorize=vectorize
        )
        terms = collect_terms(run, scaled=False, analytic_kl=analytic_kl)
    terms.require_per_datapoint()
    return run, terms


def probe(model: Callable, guide: Callable, args: tuple, kwargs: dict, plate_name: str | None) -> ProgramPlan:
    """The program's structure for evaluation (:func:`~pyro_vae.infer.particles.plan_program`
    with modules in eval mode and no gradients)."""
    with frozen_evaluation():
        return plan_program(model, guide, args, kwargs, plate_name=plate_name)


def log_terms(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1,
    plate_name: str | None = None,
    plan: ProgramPlan | None = None,
    analytic_kl: bool = False,
    vectorize: bool | None = None,
    **kwargs: Any,
) -> Terms:
    """Draw ``num_particles`` samples from the guide for every datapoint and return the
    per-datapoint log densities of the true (unscaled) model, ``(K, B)`` each.

    Vectorized over a particle plate left of the program's plates when the program
    broadcasts, one particle at a time otherwise (``Terms.mode`` says which). Modules run in
    eval mode and nothing is differentiated: evaluation changes no parameter and no running
    statistic. Guide sites may be discrete. Factors and auxiliary sites of the training
    objective are left out.

    :param plate_name: the data plate; found by its size (the rows of ``args[0]``) when omitted.
    :param plan: the program's structure from an earlier probe (found here when omitted).
    :param analytic_kl: closed-form KL terms where registered (see
        :func:`~pyro_vae.infer.terms.collect_terms`).
    """
    check_positive_int(num_particles, "num_particles")
    if plan is None:
        check_rows(args)
        plan = probe(model, guide, args, kwargs, plate_name)
    return evaluate_particles(
        model,
        guide,
        args,
        kwargs,
        num_particles=num_particles,
        plan=plan,
        analytic_kl=analytic_kl,
        vectorize=vectorize,
    )[1]


def data_chunks(args: tuple, kwargs: dict, data_chunk: int) -> Iterator[tuple[tuple, dict]]:
    """Consecutive chunks of ``data_chunk`` rows of the program's arguments: every tensor with
    one row per datapoint is split, positional or keyword (see :func:`rows_of`); other
    arguments pass through."""
    check_positive_int(data_chunk, "data_chunk")
    n = num_rows(args)
    names = list(kwargs)
    for start in range(0, n, data_chunk):
        stop = start + data_chunk
        chunk = rows_of((*args, *kwargs.values()), start, stop)
        yield chunk[: len(args)], dict(zip(names, chunk[len(args) :], strict=True))


MAX_ROWS = 50_000
"""The most particle-rows a chunk holds by default, however few features the data have."""

CHUNK_ELEMENTS = 2_000_000
"""Particle-rows times features per chunk by default: a chunk's largest tensors (the
likelihood's parameters, one row per particle and datapoint) stay near 8 MB in float32.
Larger chunks are slower, not faster, because their tensors are handed back to the operating
system between chunks and first touched afresh for every chunk (page faults). On the
784-feature benchmark VAE (``benchmarks/iwae_eval.py``, K=1000, 1000 points): 2,551 rows
(2 points x 1000 particles) took 8.52 s with 3 page faults, 10,204 rows 9.38 s with 1.36
million (the hand-written estimator: 6.66 and 8.25 s); 50,000 rows had taken 1.46 times as
long as 10,204."""


def default_max_rows(args: tuple) -> int:
    """``max_rows`` when none is given: :data:`CHUNK_ELEMENTS` over the features of one row
    of the data (the first tensor argument), at most :data:`MAX_ROWS`."""
    first = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), None)
    features = max(1, first[0].numel()) if first is not None else 1
    return max(1, min(MAX_ROWS, CHUNK_ELEMENTS // features))


def chunk_sizes(n: int, num_particles: int, max_rows: int) -> tuple[int, int]:
    """``(data_chunk, particle_chunk)`` so that one chunk holds at most ``max_rows``
    particle-rows (at least one datapoint and one particle)."""
    check_positive_int(max_rows, "max_rows")
    data_chunk = max(1, min(n, max_rows // min(num_particles, max_rows)))
    return data_chunk, max(1, min(num_particles, max_rows // data_chunk))


def _probe_first_chunk(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, plate_name: str | None, rows: int
) -> ProgramPlan:
    """:func:`probe` on the first chunk of ``rows`` rows (an evaluation's first chunk: the probe
    then costs one chunk, not one more pass over all the data), or on all the rows when the
    program has parameters per datapoint (Pyro's ``AutoNormal``, whose rows must not be split)
    or cannot run on a chunk."""
    if rows < num_rows(args):
        chunk, chunk_kwargs = next(data_chunks(args, kwargs, rows))
        try:
            plan = probe(model, guide, chunk, chunk_kwargs, plate_name)
        except Exception:
            plan = None
        if plan is not None and not plan.local_params:
            return plan
    return probe(model, guide, args, kwargs, plate_name)


@dataclass(frozen=True)
class ChunkLayout:
    """How an evaluation splits its work: the program's ``plan``, chunks of ``data_chunk`` of
    its ``rows`` datapoints and, for each, particle chunks of ``sizes``."""

    plan: ProgramPlan
    rows: int
    data_chunk: int
    sizes: tuple[int, ...]

    @property
    def chunks(self) -> int:
        """Chunks the evaluation runs: chunks of rows times particle chunks per row chunk."""
        return -(-self.rows // self.data_chunk) * len(self.sizes)


def chunk_layout(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    data_chunk: int | None = None,
    particle_chunk: int | None = None,
    max_rows: int | None = None,
    plate_name: str | None = None,
    plan: ProgramPlan | None = None,
) -> ChunkLayout:
    """The chunks of :func:`streamed_log_terms`, the program probed for its plan (on the first
    chunk) unless ``plan`` is given; the options checked before any chunk runs."""
    check_rows(args)
    check_positive_int(num_particles, "num_particles")
    for value, name in ((data_chunk, "data_chunk"), (particle_chunk, "particle_chunk")):
        if value is not None:
            check_positive_int(value, name)
    n = num_rows(args)
    max_rows = default_max_rows(args) if max_rows is None else max_rows
    default_data, default_particles = chunk_sizes(n, num_particles, max_rows)
    if plan is None:
        plan = _probe_first_chunk(model, guide, args, kwargs, plate_name, data_chunk or default_data)
    if plan.local_params:  # parameters per row (AutoNormal): the rows are never split
        if data_chunk is not None and data_chunk < n:
            name = next(iter(plan.local_params))
            raise InputError(
                f"the program has parameters per datapoint ('{name}'), so its {n} rows cannot be split "
                f"into chunks of {data_chunk}; leave data_chunk unset"
            )
        data_chunk = n
    if data_chunk is not None:
        default_particles = max(1, min(num_particles, max_rows // data_chunk))
    per = particle_chunk or default_particles
    sizes = tuple(min(per, num_particles - done) for done in range(0, num_particles, per))
    return ChunkLayout(plan=plan, rows=n, data_chunk=data_chunk or default_data, sizes=sizes)


def layout_chunks(
    args: tuple, kwargs: dict, layout: ChunkLayout
) -> Iterator[tuple[tuple, dict, list[int], ProgramPlan]]:
    """For each chunk of rows of ``layout``, its arguments, the sizes of its particle chunks
    and the program's plan."""
    for chunk, chunk_kwargs in data_chunks(args, kwargs, layout.data_chunk):
        yield chunk, chunk_kwargs, list(layout.sizes), layout.plan


def streamed_log_terms(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    data_chunk: int | None = None,
    particle_chunk: int | None = None,
    max_rows: int | None = None,
    plate_name: str | None = None,
    analytic_kl: bool = False,
    plan: ProgramPlan | None = None,
) -> Iterator[Iterator[Terms]]:
    """For each chunk of rows, the :class:`Terms` of its ``num_particles`` particles in
    particle chunks: ``for chunk in streamed_log_terms(...): for terms in chunk: ...``. By
    default a chunk holds at most ``max_rows`` particle-rows (``None``:
    :func:`default_max_rows`), so that an accumulator over
    particles (a streaming log-mean-exp, running moments) keeps memory flat in
    ``num_particles``. The program is probed once, on the first chunk (or ``plan``, a probe
    of the same program kept from an earlier call, is used); a program with
    parameters per datapoint (Pyro's ``AutoNormal``) is never split into chunks of rows."""
    layout = chunk_layout(
        model,
        guide,
        args,
        kwargs,
        num_particles=num_particles,
        data_chunk=data_chunk,
        particle_chunk=particle_chunk,
        max_rows=max_rows,
        plate_name=plate_name,
        plan=plan,
    )
    for chunk, chunk_kwargs, sizes, chunk_plan in layout_chunks(args, kwargs, layout):
        yield _particle_terms(model, guide, chunk, chunk_kwargs, sizes, chunk_plan, analytic_kl)


def _particle_terms(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    sizes: list[int],
    plan: ProgramPlan,
    analytic_kl: bool,
) -> Iterator[Terms]:
    """:func:`log_terms` of the same rows for particle chunks of ``sizes``: peak memory does
    not grow with the number of particles."""
    for k in sizes:
        yield log_terms(model, guide, *args, num_particles=k, plan=plan, analytic_kl=analytic_kl, **kwargs)


class LogWeightAccumulator(Protocol):
    """What :func:`accumulate_log_weights` feeds: ``add`` takes ``(k, B)`` log-weights."""

    def add(self, log_weight: torch.Tensor) -> None: ...


A = TypeVar("A", bound=LogWeightAccumulator)


class ChunkCapture(Protocol):
    """What :func:`accumulate_log_weights` asks of ``capture``
    (:class:`~pyro_vae.infer.captured_log_weights.CapturedLogWeights`): a chunk's log-weights
    and mode as :func:`eager_log_weight` gives them."""

    def begin(self, chunks: int) -> None: ...

    def log_weight(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        *,
        num_particles: int,
        plan: ProgramPlan,
        analytic_kl: bool = False,
    ) -> tuple[torch.Tensor, str]: ...


def accumulate_log_weights(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    make: Callable[[], A],
    num_particles: int,
    data_chunk: int | None = None,
    particle_chunk: int | None = None,
    max_rows: int | None = None,
    plate_name: str | None = None,
    analytic_kl: bool = False,
    capture: ChunkCapture | None = None,
) -> tuple[list[A], str]:
    """One accumulator (``make()``) per chunk of rows, fed the log-weights of all
    ``num_particles`` particles of those rows in particle chunks (see
    :func:`streamed_log_terms`); and how the particles were drawn (``Terms.mode``). With
    ``capture``, the chunks' log-weights are replayed from its captured graphs once a chunk's
    structure is known (:class:`~pyro_vae.infer.captured_log_weights.CapturedLogWeights`, told
    the call's number of chunks before the first runs: the first replay of each of its graphs
    is checked against an eager run in every call)."""
    layout = chunk_layout(
        model,
        guide,
        args,
        kwargs,
        num_particles=num_particles,
        data_chunk=data_chunk,
        particle_chunk=particle_chunk,
        max_rows=max_rows,
        plate_name=plate_name,
    )
    weights = eager_log_weight
    if capture is not None:
        capture.begin(layout.chunks)  # each call's first replay of every graph is checked
        weights = capture.log_weight
    out, mode = [], "single"
    with frozen_evaluation():  # once for all chunks (each chunk's own is then a no-op)
        for chunk, chunk_kwargs, sizes, plan in layout_chunks(args, kwargs, layout):
            acc = make()
            for k in sizes:
                log_weight, mode = weights(
                    model, guide, chunk, chunk_kwargs, num_particles=k, plan=plan, analytic_kl=analytic_kl
                )
                acc.add(log_weight)
            out.append(acc)
    return out, mode


def eager_log_weight(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    plan: ProgramPlan,
    analytic_kl: bool = False,
) -> tuple[torch.Tensor, str]:
    """The ``(K, B)`` log-weights of :func:`log_terms` and how the particles were drawn."""
    terms = log_terms(
        model, guide, *args, num_particles=num_particles, plan=plan, analytic_kl=analytic_kl, **kwargs
    )
    return terms.log_weight, terms.mode


def chunked_log_terms(
    model: Callable,
    guide: Callable,
    *args: Any,
    data_chunk: int,
    num_particles: int = 1,
    plate_name: str | None = None,
    analytic_kl: bool = False,
    plan: ProgramPlan | None = None,
    **kwargs: Any,
) -> Iterator[Terms]:
    """:func:`log_terms` over consecutive chunks of ``data_chunk`` rows, all particles of a
    chunk at once (the program's structure is probed once, on the first chunk)."""
    for chunk in streamed_log_terms(
        model,
        guide,
        args,
        kwargs,
        num_particles=num_particles,
        data_chunk=data_chunk,
        particle_chunk=num_particles,
        plate_name=plate_name,
        analytic_kl=analytic_kl,
        plan=plan,
    ):
        yield from chunk
