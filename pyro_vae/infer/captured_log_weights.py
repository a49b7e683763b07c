"""An evaluation's per-chunk log-weights replayed from graphs captured once per chunk structure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from pyro.poutine.runtime import _PYRO_STACK

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.infer.captured import check_compile, compiler_found
from pyro_vae.infer.graph_capture import (
    CapturedGraph,
    GraphCache,
    capture_graph,
    describe_arguments,
    tensors_of,
    with_tensors,
)
from pyro_vae.infer.loss import program_key
from pyro_vae.infer.modes import evaluating
from pyro_vae.infer.onednn_matmul import resolve_matmul
from pyro_vae.infer.particles import ProgramPlan
from pyro_vae.infer.per_datapoint import eager_log_weight


class CapturedLogWeights:
    """The log-weights :math:`\\log w_k = \\log p(x, z_k) - \\log q(z_k \\mid x)` of an
    evaluation's chunks (:func:`~pyro_vae.bounds.iwae`, :func:`~pyro_vae.bounds.elbo`, ...,
    given as ``capture=``), replayed from a graph captured once per chunk structure: the
    mechanism of :class:`~pyro_vae.infer.captured.CapturedLoss`
    (:mod:`pyro_vae.infer.graph_capture`), for evaluation.

    An evaluation runs the same program on many chunks of the same shape (2 points x 1000
    particles, 500 times, for :math:`\\mathcal L_{1000}` of 1000 MNIST digits); Pyro's
    effect handlers, the site recorder and the per-site bookkeeping are Python that runs
    for every chunk and produces no tensor operation. Captured, a chunk replays only the
    ATen operations the program performs (the random draws included, in the same order):
    the same log-weights as the eager chunk for the same random state, bitwise, with Pyro's
    validation off (it ran in the eager chunks; with validation on, Pyro evaluates some
    densities in another order, equal to float rounding).

    A structure is the programs (their identity), the particles per chunk, the program's
    plan, ``analytic_kl`` and the shapes, dtypes and devices of the tensor arguments (and
    the values of the others). It runs eagerly its first ``capture_after`` times; then it is
    captured and checked at once against an eager run. Replays are re-checked against eager
    runs (the 1st, 2nd, 4th, 8th, ... of every graph, and the first of every graph in each
    call of a bound): a check that fails or a replay that
    raises undoes the replay, runs the chunk eagerly, keeps the structure eager from then
    on and warns (:class:`~pyro_vae.errors.CaptureFallbackWarning`); ``fallback_reason``
    says why. A graph is used while the parameter store and the modules hold the parameters
    it reads. Python's ``random`` and NumPy's global generator are restored after tracing
    and checking, as PyTorch's are, so a program that draws from them (it is refused: the
    traced graph bakes one draw in) keeps its eager draws. A program that draws from a
    ``torch.Generator`` of its own is refused as well, but tracing it advances that
    generator: its later draws are not the eager run's. A program with an operation whose
    output's shape depends on tensor values (``nonzero``, boolean indexing) is refused. A
    check compares the random draws as well as the values, and an unchecked replay that
    raises half-way puts PyTorch's random state and the modules' buffers back first. What
    no check between two checked replays can see is Python state that changes from chunk
    to chunk within a call (a counter the program keeps), or a tensor outside the parameter
    store and the modules replaced between calls where the call's first chunk does not
    show it; such programs need ``capture=False``.

    Keep one object to reuse its graphs across calls (a held-out bound every epoch; each call
    still probes the program for its plan, so a program whose structure changed between
    calls is planned afresh, and the call's first chunk, which settles the plan, is a
    structure of its own): each
    capture records the program's operations from one eager run
    (:func:`~pyro_vae.infer.graph_record.record_graph`) and checks the graph against another:
    0.08-0.16 s a call for the 784-400-50 VAE, against 1.5 ms saved a chunk. For one
    evaluation it pays when there are many chunks (a hundred or more); the bounds' default
    makes one for a call of at least :data:`AUTO_CAPTURE_CHUNKS` chunks that captures a
    structure once it has run :data:`AUTO_CAPTURE_AFTER` times, and compiles it in a call of
    at least :data:`COMPILE_CHUNKS` chunks; ``capture=True`` one that captures after the
    first chunk, whatever the call's length. Runs inside enclosing Pyro handlers are always eager.

    :param capture_after: eager runs of a structure before it is captured (at least 1).
    :param max_graphs: structures captured at most (an evaluation over several K, or over data
        whose last chunk is shorter, meets several; a graph refers to the tensors it reads and
        copies none).
    :param compile: also compile each graph with TorchInductor
        (:func:`~pyro_vae.infer.graph_compile.compile_graph`, see
        :class:`~pyro_vae.infer.captured.CapturedLoss`; the compiled graph is checked against
        the bitwise-checked one at capture and its replays to float rounding, PyTorch's own
        random draws kept); ``None``: decided at the start of each call of a bound from its
        number of chunks (:func:`compiles`: at least :data:`COMPILE_CHUNKS`, where a C++
        compiler is found), for the structures that call captures.
    :param matmul: ``"aten"`` (bitwise the eager chunks) or ``"onednn"``: the graphs' float32
        CPU matrix products on oneDNN's kernels (:mod:`~pyro_vae.infer.onednn_matmul`;
        log-weights equal to float rounding, checked so), or ``"auto"``
        (:func:`~pyro_vae.infer.onednn_matmul.resolve_matmul`).
    :param min_chunks: the fewest chunks a bound's call must have (:meth:`begin` is told) for
        it to replay or capture anything; a shorter call runs every chunk eagerly.
    """

    def __init__(
        self,
        *,
        capture_after: int = 1,
        max_graphs: int = 16,
        compile: bool | None = False,
        matmul: str = "aten",
        min_chunks: int = 1,
    ) -> None:
        check_positive_int(min_chunks, "min_chunks")
        if compile is not None and not isinstance(compile, bool):
            raise InputError(f"compile must be True, False or None, got {compile!r}")
        if compile:
            check_compile(True)
        self._cache = GraphCache(capture_after=capture_after, max_graphs=max_graphs)
        self.compile_option = compile
        self.matmul = resolve_matmul(matmul)
        self.compile = bool(compile)
        self.min_chunks = min_chunks
        self._active = True
        self.captured_chunks = 0

    @property
    def fallback_reason(self) -> str:
        """Why the last structure that could not be captured, or was dropped, runs eagerly."""
        return self._cache.fallback_reason

    @property
    def graphs(self) -> int:
        """Structures captured so far (dropped ones not counted)."""
        return sum(g is not None for g in self._cache.graphs.values())

    @property
    def compiled_graphs(self) -> int:
        """Structures captured and kept compiled so far."""
        return sum(g is not None and g.compiled for g in self._cache.graphs.values())

    def check_next(self) -> None:
        """Check the next replay of every graph against an eager run (:meth:`begin` does, at
        the start of every call of a bound, so Python state changed between calls is caught)."""
        self._cache.check_next()

    def begin(self, chunks: int) -> None:
        """The start of a bound's call of ``chunks`` chunks: the next replay of every graph is
        checked (:meth:`check_next`); a call of fewer than ``min_chunks`` chunks runs every
        chunk eagerly; and, with ``compile=None``, the structures this call captures are
        compiled when :func:`compiles` says so."""
        self.check_next()
        self._active = chunks >= self.min_chunks
        if self.compile_option is None:
            self.compile = compiles(chunks)

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
    ) -> tuple[torch.Tensor, str]:
        """As :func:`~pyro_vae.infer.per_datapoint.eager_log_weight`, from the structure's graph
        when there is one. Runs in evaluation mode (inside the bounds' own)."""
        key = self.structure(model, guide, args, kwargs, num_particles, plan, analytic_kl)

        def eager() -> tuple[torch.Tensor, str]:
            return eager_log_weight(
                model, guide, args, kwargs, num_particles=num_particles, plan=plan, analytic_kl=analytic_kl
            )

        captured = self._cache.get(
            key,
            lambda: self._capture(
                model, guide, args, kwargs, num_particles=num_particles, plan=plan, analytic_kl=analytic_kl
            ),
        )
        if captured is None:
            return eager()
        assert key is not None
        result = self._cache.replay(
            key,
            captured,
            tensors_of(args, kwargs),
            lambda: eager()[0],
            value=_itself,
            what="chunks",
        )
        if result is None:
            return eager()
        self.captured_chunks += 1
        mode, (plan.vectorize, plan.found_plate, plan.fallback_reason) = captured.info  # as the eager run
        return result, mode

    def structure(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        num_particles: int,
        plan: ProgramPlan,
        analytic_kl: bool,
    ) -> tuple | None:
        """The key of a chunk's graph (``None``: this chunk cannot be captured)."""
        if not self._active or _PYRO_STACK or not evaluating() or torch.is_grad_enabled():
            return None
        arguments = describe_arguments(args, kwargs)
        if arguments is None:
            return None
        return (
            program_key(model),
            program_key(guide),
            num_particles,
            analytic_kl,
            (plan.nesting, plan.plate_name, plan.found_plate, plan.vectorize),
            arguments,
        )

    def _capture(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        *,
        plan: ProgramPlan,
        **options: Any,
    ) -> CapturedGraph | str:
        """The chunk's graph, traced and checked on copies of ``plan`` (a run may settle it:
        whether the program broadcasts, where its data plate is), so that only the chunks
        that count settle the caller's; the graph keeps how its run settled the plan."""
        runs: list[tuple[str, ProgramPlan]] = []

        def run(*values: torch.Tensor) -> torch.Tensor:
            a, k = with_tensors(args, kwargs, values)
            copy = replace(plan)
            log_weight, mode = eager_log_weight(model, guide, a, k, plan=copy, **options)
            runs.append((mode, copy))
            return log_weight

        captured = capture_graph(
            run, tensors_of(args, kwargs), compile=self.compile, comparable=_alone, matmul=self.matmul
        )
        if isinstance(captured, CapturedGraph):
            mode, settled = runs[-1]
            captured.info = (mode, (settled.vectorize, settled.found_plate, settled.fallback_reason))
        return captured


AUTO_CAPTURE_CHUNKS = 200
"""Chunks from which a bound's call with its default ``capture=None`` captures (a shorter call
runs every chunk eagerly). A capture costs 0.08-0.16 s a call and saves about 1.5 ms a chunk
for the 784-400-50 VAE on the Intel host of docs/benchmarks.md (paid back after about a
hundred chunks), so a call this long gains, and a shorter one is never slower than eager. The
values are the same either way: bitwise on PyTorch's kernels, to float rounding where the
machine's (``matmul="auto"``) are oneDNN's."""

AUTO_CAPTURE_AFTER = 2
"""Eager runs of a chunk structure before the default (``capture=None``) captures it: the
first chunk of a call, which settles the program's plan, and a shorter last chunk are
structures run once, and stay eager."""

COMPILE_CHUNKS = 10_000
"""Planned chunks from which a bound's default (``capture=None``) also compiles the graphs it
captures (:class:`CapturedLogWeights` ``compile=None``): 10,000 chunks are
:math:`\\mathcal L_{5000}` of 5,000 MNIST digits, or :math:`\\mathcal L_{1000}` of 20,000.
On the Intel host of docs/benchmarks.md compiling the 784-400-50 VAE's chunk took 18 s the
first time on the machine and 6 s in a later process (TorchInductor's imports, its cache
warm), under 1.5 s for another structure, and saved 2.2-2.4 ms of each 17 ms chunk: an
evaluation this long pays back even the first compile, a much shorter one would not."""


def compiles(chunks: int) -> bool:
    """Whether ``compile=None`` compiles the graphs of a call of ``chunks`` chunks: at least
    :data:`COMPILE_CHUNKS` of them, where a C++ compiler is found
    (:func:`~pyro_vae.infer.captured.compiler_found`), whatever the kernels (the compiled
    graph calls those the capture's ``matmul`` names). It depends only on the call and the
    machine, never on timings."""
    return chunks >= COMPILE_CHUNKS and compiler_found()


def as_capture(capture: CapturedLogWeights | bool | None) -> CapturedLogWeights | None:
    """The bounds' ``capture=`` argument as an object: ``None`` (their default), a new one for
    this call that, in a call of at least :data:`AUTO_CAPTURE_CHUNKS` chunks, captures a chunk
    structure once it has run :data:`AUTO_CAPTURE_AFTER` times, and compiles it in a call of
    at least :data:`COMPILE_CHUNKS` chunks (:func:`compiles`), its products on the kernels
    ``matmul="auto"`` picks for the machine (bitwise the eager chunks where that is
    PyTorch's, to float rounding where it is oneDNN's);
    ``True``, a new one capturing after one chunk; ``False``, none (every chunk eager)."""
    if capture is None:
        return CapturedLogWeights(
            capture_after=AUTO_CAPTURE_AFTER, min_chunks=AUTO_CAPTURE_CHUNKS, compile=None, matmul="auto"
        )
    if capture is True:
        return CapturedLogWeights()
    if capture is False:
        return None
    if not isinstance(capture, CapturedLogWeights):
        raise InputError(f"capture must be a bool or a CapturedLogWeights, got {type(capture).__name__}")
    return capture


def _itself(result: Any) -> torch.Tensor:
    return result


def _alone(eager: torch.Tensor) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """What a captured chunk must reproduce: its log-weights."""
    return lambda result: [result]
