"""Capturing a Pyro program's tensor computation as a graph once its structure is known, and
replaying it checked: the one mechanism under :class:`~pyro_vae.infer.captured.CapturedLoss`
(a training step) and :class:`~pyro_vae.infer.captured_log_weights.CapturedLogWeights` (an
evaluation's chunks)."""

from __future__ import annotations

import operator
import random
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyro
import torch
from torch import fx, nn
from torch.fx._lazy_graph_module import _LazyGraphModule

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import CaptureFallbackWarning
from pyro_vae.infer.graph_compile import compile_graph, joint_graph
from pyro_vae.infer.graph_record import RecordRefused, drop_values, record_graph
from pyro_vae.infer.graph_replay import replay_function
from pyro_vae.infer.graph_simplify import SimplifiedGraph, attribute, simplify_graph
from pyro_vae.infer.modes import BufferSnapshot
from pyro_vae.infer.onednn_matmul import use_onednn_matmul
from pyro_vae.infer.particles import (
    cuda_devices,
    forked_rng,
    rng_state,
    set_rng_state,
    set_torch_rng_state,
    torch_rng_state,
)

_MAX_STRUCTURES_COUNTED = 1024
_EAGER = -1
"""A structure's run count in :meth:`GraphCache.state` when it runs eagerly for good."""
TRAINING = operator.attrgetter("training")

Comparable = Callable[[Any], Callable[[Any], list[torch.Tensor]]]
"""Given an eager run's result, the function mapping a result to the tensors that must agree
(a loss: the objective and the gradients of the leaves the eager run reached)."""


def describe(value: Any) -> Any:
    """What of an argument a captured graph depends on: a tensor's shape, dtype, device and
    gradient flag (its values are graph inputs); any other value itself (``None`` when unhashable)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.shape, value.dtype, value.device, value.requires_grad)
    try:
        hash(value)
    except TypeError:
        return None
    return (type(value), value)


def describe_arguments(args: tuple, kwargs: dict) -> tuple | None:
    """:func:`describe` of every argument, keyword arguments by name (``None``: one is unhashable)."""
    names = tuple(sorted(kwargs))
    parts: list[Any] = [names]
    for value in (*args, *(kwargs[k] for k in names)):
        described = describe(value)
        if described is None:
            return None
        parts.append(described)
    return tuple(parts)


@dataclass
class CapturedGraph:
    """One structure's graph, the modules whose buffers it updates, and its replays so far."""

    run: Callable
    modules: list[nn.Module]
    param_names: tuple[str, ...]
    param_tensors: tuple[torch.Tensor, ...]
    simplified: SimplifiedGraph
    slots: tuple[tuple[dict, ...], tuple[str, ...], tuple[torch.Tensor, ...]] = ((), (), ())
    """The modules' own entries (``_parameters``, ``_buffers``) holding the tensors the graph reads."""
    devices: list[torch.device] = field(default_factory=list)
    buffered: list[nn.Module] = field(default_factory=list)
    """The modules with buffers (restored when a replay fails half-way)."""
    replays: int = 0
    check: bool = False
    info: Any = None
    """What the caller keeps with the graph (an evaluation: how its particles were drawn)."""
    kernels: str = "aten"
    """What runs the graph's matrix products: ``"aten"`` (PyTorch's choice) or ``"onednn"``."""
    compiled: bool = False
    """Whether the replay is the graph compiled by TorchInductor."""
    note: str = ""
    """Why a faster form asked for was not kept (a compile that failed or disagreed)."""
    grad_flags: tuple[bool, ...] = ()
    """The parameters' ``requires_grad`` at capture (:meth:`current`)."""

    def __post_init__(self) -> None:
        self.grad_flags = tuple(t.requires_grad for t in self.param_tensors)

    @property
    def exact(self) -> bool:
        """Whether replays are checked bitwise: the graph's own operations on PyTorch's kernels
        (else, compiled or on oneDNN's, to float rounding, :func:`within_rounding`)."""
        return self.kernels == "aten" and not self.compiled

    def current(self) -> bool:
        """Whether the parameter store and the modules that ran still hold the tensors the
        graph reads (a parameter replaced by another tensor, or deleted, needs a new graph:
        ``pyro.module`` keeps the store's tensor when a module's parameter is replaced, so the
        store alone would not tell), that each still requires a gradient as it did (a graph
        compiled with its gradients, :func:`~pyro_vae.infer.graph_compile.joint_graph`, has
        one for each parameter that did, and none for the others), and that the constants
        whose values the graph's simplification relied on are unchanged."""
        store = pyro.get_param_store().named_parameters().mapping
        same = all(map(operator.is_, map(store.get, self.param_names), self.param_tensors))
        flags = tuple(t.requires_grad for t in self.param_tensors) == self.grad_flags
        dicts, names, tensors = self.slots
        held = all(map(operator.is_, map(dict.get, dicts, names), tensors))
        return same and flags and held and self.simplified.current()

    def due(self) -> bool:
        """Whether this replay is checked: the 1st, 2nd, 4th, 8th, ... and any asked for."""
        return self.check or (self.replays & (self.replays - 1)) == 0


class GraphCache:
    """Captured graphs by structure key: a structure runs eagerly its first ``capture_after``
    times, is then captured (``capture()``: a :class:`CapturedGraph`, or why not), and stays
    eager once dropped; at most ``max_graphs`` structures are captured."""

    def __init__(self, *, capture_after: int, max_graphs: int) -> None:
        check_positive_int(capture_after, "capture_after")
        self.capture_after = capture_after
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, CapturedGraph | None] = {}
        self.seen: Counter[tuple] = Counter()
        self.fallback_reason = ""
        self.names: dict[tuple, str] = {}
        """Each structure's name across processes (:meth:`state`), given at its first sight."""
        self.pending: dict[str, int] = {}
        """A loaded :meth:`state`'s structures not seen since (:meth:`load_state`)."""

    def get(
        self,
        key: tuple | None,
        capture: Callable[[], CapturedGraph | str],
        name: Callable[[], str] | None = None,
    ) -> CapturedGraph | None:
        """The graph of structure ``key`` (``None``: run eagerly), captured now if it is due;
        ``name()`` names the structure across processes (:meth:`state`), asked at its first sight."""
        if key is None:
            return None
        if key in self.graphs:
            captured = self.graphs[key]
            if captured is None or captured.current():
                self.seen[key] += 1  # every run counts: a later stage (compiling) may be due
                return captured
            del self.graphs[key]  # its parameters were replaced: eager, then captured anew
            self.seen[key] = 0
        if key not in self.seen and name is not None and len(self.names) < _MAX_STRUCTURES_COUNTED:
            self.names[key] = named = name()
            runs = self.pending.pop(named, None)
            if runs == _EAGER:  # dropped before the state was saved: eager, as it was
                self.seen[key] = self.capture_after + 1
                self.graphs[key] = None
                return None
            if runs is not None:
                self.seen[key] = runs
        if key in self.seen or len(self.seen) < _MAX_STRUCTURES_COUNTED:
            self.seen[key] += 1
        if self.seen[key] <= self.capture_after:  # eager: the first run plans and checks the program
            return None
        if len(self.graphs) + self._reserved() >= self.max_graphs:
            return None
        return self.capture(key, capture)

    def capture(self, key: tuple, capture: Callable[[], CapturedGraph | str]) -> CapturedGraph | None:
        """Structure ``key`` captured now by ``capture()``, replacing any graph it had (a later
        stage, such as compiling, now due); ``None`` when the capture is refused (``capture()``
        says why: its check against the eager run failed, say), and the structure then runs
        eagerly from now on."""
        made = capture()
        if isinstance(made, str):
            self.fallback_reason = made
            self.graphs[key] = None
            return None
        self.graphs[key] = made
        return made

    def replay(
        self,
        key: tuple,
        captured: CapturedGraph,
        tensors: list[torch.Tensor],
        eager: Callable[[], torch.Tensor],
        *,
        value: Callable[[Any], torch.Tensor],
        what: str = "steps",
    ) -> Any:
        """The next replay of ``captured``, checked against ``eager()`` when it is due
        (:func:`checked_replay`, bitwise or to float rounding as ``captured.exact`` says, else
        :func:`unchecked_replay`); ``None``, the structure dropped, when it cannot be trusted
        (the caller then runs eagerly)."""
        captured.replays += 1
        if captured.due():
            result, why = checked_replay(captured, eager, tensors, value=value, compiled=not captured.exact)
        else:
            result, why = unchecked_replay(captured, tensors)
        if why:
            self.drop(key, why, what=what)
        return result

    def drop(self, key: tuple, reason: str, *, what: str = "steps") -> None:
        """Run structure ``key`` eagerly from now on, and warn why."""
        self.fallback_reason = reason
        self.graphs[key] = None
        warnings.warn(
            f"{reason}; this structure's {what} run eagerly from now on", CaptureFallbackWarning, stacklevel=4
        )

    def check_next(self) -> None:
        """Check the next replay of every graph against an eager run."""
        for captured in self.graphs.values():
            if captured is not None:
                captured.check = True

    def state(self) -> dict[str, int]:
        """How often each named structure has run (:data:`_EAGER`: it runs eagerly for good,
        refused or dropped), by name: what a resumed run needs to capture and drop the same
        structures at the same steps as the run it continues (:meth:`load_state`)."""
        out = dict(self.pending)
        for key, named in self.names.items():
            dropped = key in self.graphs and self.graphs[key] is None
            out[named] = _EAGER if dropped else self.seen[key]
        return out

    def load_state(self, state: dict[str, int]) -> None:
        """Continue from :meth:`state`: every structure forgotten, and each named one, when next
        seen, taken to have run as often as the state says, so that one past ``capture_after``
        is captured at once and its steps are replays, as they were in the saved run (without
        it a resumed run's first ``capture_after`` steps run eagerly: the same bits with
        PyTorch's kernels, to float rounding with another's)."""
        self.graphs.clear()
        self.seen.clear()
        self.names.clear()
        self.pending = {str(k): int(v) for k, v in state.items()}

    def _reserved(self) -> int:
        """Graph slots held by loaded structures not seen again yet (captured or dropped)."""
        if not self.pending:
            return 0
        return sum(1 for runs in self.pending.values() if runs == _EAGER or runs > self.capture_after)


def capture_graph(
    run: Callable[..., Any],
    tensors: list[torch.Tensor],
    *,
    compile: bool,
    comparable: Comparable,
    info: Any = None,
    matmul: str = "aten",
    differentiate: int | None = None,
    grad_output: float = 1.0,
) -> CapturedGraph | str:
    """``run(*tensors)``'s ATen operations, recorded from an eager run
    (:func:`~pyro_vae.infer.graph_record.record_graph`) and simplified
    (:func:`~pyro_vae.infer.graph_simplify.simplify_graph`), as a :class:`CapturedGraph`
    whose replay was checked bitwise against an eager run at the same random state; or why it
    cannot be captured. With ``compile=True`` the checked graph is then compiled by
    TorchInductor and the compiled one kept when it agrees with it to float rounding
    (:func:`_compiled`; else the checked graph is kept, and ``note`` says why). With ``matmul="onednn"``
    the graph checked bitwise is then copied with its float32 CPU matrix products on oneDNN's
    kernels (:func:`~pyro_vae.infer.onednn_matmul.use_onednn_matmul`), and the copy is kept
    when it agrees with it (:func:`_on_onednn`; compiled, Inductor's code calls those
    products, and a graph that cannot be compiled is kept uncompiled on them); its later
    replays are checked to float rounding.

    Tracing and the check run the program twice more: neither changes a later draw or a
    running statistic of the program's modules, and Pyro's validation is off in both."""
    devices = cuda_devices(tensors)
    before = rng_state(devices)
    # Python's and NumPy's generators forked too: tracing must not move a later draw
    simplified: SimplifiedGraph | None = None
    with forked_rng(tensors), BufferSnapshot() as snapshot, pyro.validation_enabled(False):
        try:
            traced = record_graph(run, tensors)
            refused = _uncapturable(traced, before)  # before dead code goes: a shape read is unused
            if refused:
                return refused
            simplified = simplify_graph(traced)
            state = rng_state(devices)
            eager = run(*tensors)  # at the random state the replay gets
            values = comparable(eager)
            expected = values(eager)
            for fold in (True, False):
                if not fold:  # folding reordered a sum: the graph as traced
                    if not simplified.folds:
                        break
                    set_rng_state(before, devices)  # traced again as the first time
                    simplified = simplify_graph(record_graph(run, tensors), fold=False)
                # the graph's forward, not the module: a module's call would run global
                # module hooks, which would take the graph's constants (others' buffers)
                replay = replay_function(simplified.module)
                graph: Callable = replay.run
                read: list[Any] = list(replay.constants)
                set_rng_state(state, devices)
                got = values(graph(*tensors))
                pairs = enumerate(zip(got, expected, strict=True))
                differs = [i for i, (g, e) in pairs if not agree(g, e, False)]
                if not differs:
                    break
            kernels, compiled, note = "aten", False, ""
            checked = _Checked(values, tensors, state, devices, got)
            if compile and not differs:
                fast, fast_kernels, note = _compiled(
                    simplified.module, checked, differentiate, grad_output, matmul
                )
                if fast is not None:
                    (graph, read), compiled, kernels = fast, True, fast_kernels
            if matmul == "onednn" and not (differs or compiled):  # uncompiled, or the compile failed
                fast = _on_onednn(simplified.module, checked)
                if fast is not None:
                    (graph, read), kernels = fast, "onednn"
        except RecordRefused as e:
            return str(e)
        except Exception as e:
            return f"capture failed: {type(e).__name__}: {e}"
        finally:
            if simplified is not None:
                drop_values(simplified.module)  # the run's intermediate tensors, not kept
        modules = snapshot.modules
    if differs:
        what = (
            "value differs from the eager one" if differs[0] == 0 else "gradients differ from the eager ones"
        )
        return (
            f"the captured graph's {what}: the program's Python depends on tensor values or on "
            "state outside its arguments and parameters"
        )
    buffered = [m for m in modules if any(b is not None for b in m._buffers.values())]
    return CapturedGraph(
        graph,
        modules,
        *_params_read(read),
        simplified,
        _slots(modules, read),
        devices,
        buffered,
        info=info,
        kernels=kernels,
        compiled=compiled,
        note=note,
    )


def checked_replay(
    captured: CapturedGraph,
    eager: Callable[[], torch.Tensor],
    tensors: list[torch.Tensor],
    *,
    value: Callable[[Any], torch.Tensor],
    compiled: bool,
) -> tuple[Any, str]:
    """A replay of ``captured`` checked against ``eager()`` (the value to agree with, run
    without gradients) at the same random state: ``(result, "")``, or ``(None, why)`` with
    the replay undone (random state and the modules' buffers) when they differ or the replay
    raises."""
    captured.check = False
    devices = captured.devices
    state = rng_state(devices)
    with torch.no_grad(), BufferSnapshot(), pyro.validation_enabled(False):
        expected = eager()
    drawn = rng_state(devices)
    set_rng_state(state, devices)
    buffers = BufferSnapshot.of(captured.modules)
    try:
        result = captured.run(*tensors)
        got = value(result).detach()
    except Exception as e:
        result, why = None, f"a replay failed: {type(e).__name__}: {e}"
    else:
        why = "" if agree(got, expected, compiled) else _disagreement(got, expected)
        if not why and not _same_torch_state(rng_state(devices), drawn):
            why = (
                "a replay drew other random numbers than the eager run: the program's Python "
                "depends on state outside its arguments and parameters"
            )
    if why:
        buffers.restore()
        set_rng_state(state, devices)
        return None, why
    return result, ""


def unchecked_replay(captured: CapturedGraph, tensors: list[torch.Tensor]) -> tuple[Any, str]:
    """An unchecked replay: ``(result, "")``, or ``(None, why)`` with PyTorch's random state
    and the modules' buffers put back when it raises half-way (a shape that depends on data
    values), so that the eager run that follows starts where the replay did."""
    state = torch_rng_state(captured.devices)
    buffers = BufferSnapshot.of(captured.buffered) if captured.buffered else None
    try:
        return captured.run(*tensors), ""
    except Exception as e:
        if buffers is not None:
            buffers.restore()
        set_torch_rng_state(state, captured.devices)
        return None, f"a replay failed: {type(e).__name__}: {e}"


def _uncapturable(graph: fx.GraphModule, before: tuple) -> str:
    """Why a traced graph cannot stand for the program (``""``: it can): an operation whose
    output's shape depends on tensor values (``nonzero``, boolean indexing: the shapes after
    it were traced for one chunk's values), or draws from Python's or NumPy's generators
    during the trace (a graph bakes them in)."""
    for node in graph.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        dynamic = torch.Tag.dynamic_output_shape in node.target.tags
        boolean_index = node.target is torch.ops.aten.index.Tensor and any(
            isinstance(i, fx.Node) and getattr(i.meta.get("val"), "dtype", None) in (torch.bool, torch.uint8)
            for i in (node.args[1] if len(node.args) > 1 else ())
        )
        if dynamic or boolean_index:
            return (
                f"capture refused: {node.target} gives an output whose shape depends on tensor values, "
                "which a graph traced on one chunk cannot follow"
            )
    if random.getstate() != before[2] or not _same_numpy_state(np.random.get_state(), before[3]):
        return (
            "capture refused: the program draws from Python's random or NumPy's generator, "
            "whose draws a graph would bake in"
        )
    return ""


def _same_numpy_state(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])


def _same_torch_state(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and all(map(torch.equal, a[1], b[1]))


def _disagreement(got: torch.Tensor, expected: torch.Tensor) -> str:
    values = f" ({float(got)} against {float(expected)})" if got.numel() == 1 else ""
    return (
        f"a replay's value differs from the eager one{values}: the program's Python depends on "
        "state outside its arguments and parameters"
    )


def _constants(graph: fx.GraphModule) -> list[Any]:
    """The tensors ``graph`` reads as attributes."""
    return [attribute(graph, str(n.target)) for n in graph.graph.nodes if n.op == "get_attr"]


def _slots(modules: list[nn.Module], constants: list[Any]) -> tuple[tuple[dict, ...], tuple[str, ...], tuple]:
    """Where in ``modules`` (their ``_parameters`` and ``_buffers``) the graph's constants live."""
    read = {id(t) for t in constants}
    found = [
        (entries, name, t)
        for module in modules
        for entries in (module._parameters, module._buffers)
        for name, t in entries.items()
        if t is not None and id(t) in read
    ]
    return tuple(d for d, _, _ in found), tuple(n for _, n, _ in found), tuple(t for _, _, t in found)


class _Checked(NamedTuple):
    """A graph checked bitwise against the eager run: how its values and gradients are read
    (``values``), what they were (``got``), and the inputs and random state they came from."""

    values: Callable[[Any], list[torch.Tensor]]
    tensors: list[torch.Tensor]
    state: tuple
    devices: list[torch.device]
    got: list[torch.Tensor]

    def agrees(self, run: Callable, *, rtol: float | None = None) -> bool:
        """Whether ``run`` (another form of the graph) gives its values and gradients, at the
        same random state, to float rounding (:func:`within_rounding` with ``rtol``)."""
        set_rng_state(self.state, self.devices)
        got = self.values(run(*self.tensors))
        return all(within_rounding(g, r, rtol=rtol) for g, r in zip(got, self.got, strict=True))


def _compiled(
    module: fx.GraphModule, checked: _Checked, differentiate: int | None, grad_output: float, matmul: str
) -> tuple[tuple[Callable, list[Any]] | None, str, str]:
    """``module`` (the graph ``checked``) compiled by TorchInductor
    (:func:`~pyro_vae.infer.graph_compile.compile_graph`: without TorchDynamo, PyTorch's own
    random operations kept, the same draws), as its replay and constants, when it agrees with
    the checked graph to float rounding (:func:`within_rounding`); else ``None`` and why (the
    checked graph is then kept); and the kernels of its products. With ``differentiate``, the
    graph compiled is the joint one of the outputs and the gradients of ``grad_output`` times
    output ``differentiate`` (:func:`~pyro_vae.infer.graph_compile.joint_graph`), where there
    is one: its replay returns the outputs and their
    :class:`~pyro_vae.infer.graph_compile.Gradients`.

    With ``matmul="onednn"`` a copy of the graph with its float32 CPU products on oneDNN's
    kernels (:func:`~pyro_vae.infer.onednn_matmul.use_onednn_matmul`, gradients included) is
    compiled first, and accepted within :data:`KERNEL_RTOL`, as :func:`_on_onednn` accepts
    it uncompiled; where it has no such product, or fails or disagrees, the graph on
    PyTorch's kernels is compiled instead (and where that fails too, :func:`capture_graph`
    keeps the uncompiled graph on oneDNN's kernels, :func:`_on_onednn`)."""
    notes: list[str] = []
    for kernels in ("onednn", "aten") if matmul == "onednn" else ("aten",):
        source, rtol = module, None
        if kernels == "onednn":
            source, rtol = _onednn_copy(module, compiled=True), KERNEL_RTOL
            if source is None:
                continue
        what = "not compiled on oneDNN's kernels" if kernels == "onednn" else "not compiled"
        try:
            joint = None
            if differentiate is not None:
                joint = joint_graph(
                    source, checked.tensors, differentiate=differentiate, grad_output=grad_output
                )
            if joint is None:
                graph = compile_graph(source, checked.tensors)
            else:
                with torch.no_grad():
                    graph = joint.runner(compile_graph(joint.module, [*checked.tensors, *joint.constants]))
            agrees = checked.agrees(graph, rtol=rtol)
        except Exception as e:  # Inductor cannot compile it (an operator, a missing compiler)
            notes.append(f"{what}: {type(e).__name__}: {e}")
            continue
        if agrees:
            return (graph, _constants(module)), kernels, "; ".join(notes)
        notes.append(f"{what}: the compiled graph disagreed with the checked one beyond float rounding")
    return None, "aten", "; ".join(notes)


def _onednn_copy(module: fx.GraphModule, *, compiled: bool) -> fx.GraphModule | None:
    """A copy of ``module``'s graph over the same attributes with its float32 CPU products on
    oneDNN's kernels (:func:`~pyro_vae.infer.onednn_matmul.use_onednn_matmul`: with
    ``compiled``, the operator Inductor calls), ``module`` unchanged; ``None`` when it has no
    such product."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(module.graph, {}))
    copy = _LazyGraphModule(module, graph)
    return copy if use_onednn_matmul(copy, compiled=compiled) else None


def _on_onednn(module: fx.GraphModule, checked: _Checked) -> tuple[Callable, list[Any]] | None:
    """A copy of ``module`` (the graph ``checked``) with its float32 CPU matrix products on
    oneDNN's kernels, as its replay and constants, when it agrees with the checked graph to
    :data:`KERNEL_RTOL` of each tensor's scale; ``None`` (keep PyTorch's kernels) when it
    rewrote nothing or they differ more.

    The structure (the draws, the values the program's Python read) is checked bitwise on
    the graph itself; this check is of the kernels only, whose rounding the program's own
    arithmetic may amplify (VIMCO's leave-one-out differences of log-weights: 1.3-2.4e-4 of
    the gradients' scale at initialization), while a wrong product is off by order one."""
    copy = _onednn_copy(module, compiled=False)
    if copy is None:
        return None
    replay = replay_function(copy)
    if checked.agrees(replay.run, rtol=KERNEL_RTOL):
        return replay.run, list(replay.constants)
    return None


KERNEL_RTOL = 1e-2
"""How far (relative to each tensor's largest entry) a graph on oneDNN's kernels may be from
the same graph on PyTorch's at capture (:func:`_on_onednn`)."""


def _params_read(constants: list[Any]) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    """The names and tensors of the parameter store's entries among a graph's constants."""
    read = {id(t) for t in constants}
    found = [(name, p) for name, p in pyro.get_param_store().named_parameters() if id(p) in read]
    return tuple(name for name, _ in found), tuple(p for _, p in found)


def agree(got: torch.Tensor, expected: torch.Tensor, compiled: bool) -> bool:
    """Bitwise equal, NaN for NaN (a replay runs the eager operations); when compiled, the
    same NaNs and infinities and every finite entry within float rounding of the tensor's
    scale (:func:`within_rounding`)."""
    if compiled:
        return within_rounding(got, expected)
    nan = got.isnan()
    return bool(torch.equal(nan, expected.isnan())) and bool(
        torch.equal(got.masked_fill(nan, 0), expected.masked_fill(nan, 0))
    )


def within_rounding(
    got: torch.Tensor, expected: torch.Tensor, *, atol: float = 1e-5, rtol: float | None = None
) -> bool:
    r"""Whether ``got`` is ``expected`` up to the rounding of reordered floating-point sums:
    the same shape, NaNs and infinities, and every finite entry within
    :math:`\epsilon_r \max_j |e_j| + \epsilon_a` of its expected value, with
    :math:`\epsilon_r` = ``rtol``, by default :math:`\max(10^{-4}, 10\,\epsilon_{dtype})`.

    The bound is relative to the tensor's largest entry, not to each entry: kernels that sum
    in another order (Inductor's, oneDNN's) make an error proportional to the size of the
    summands, so an entry that is a near-cancellation of large terms (a gradient summed over
    a batch and scaled by ``num_data / batch_size``) is off by far more than its own size
    times the precision. The default is for the values a checked replay compares (an
    objective, log-weights); the program's own arithmetic can amplify rounding far more in
    gradients, which :func:`_on_onednn` compares with a looser ``rtol``. A graph that does
    other arithmetic than the eager run (other draws, another value read from Python)
    differs by much more. Non-floating tensors must be equal."""
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return False
    if not (expected.is_floating_point() or expected.is_complex()):
        return bool(torch.equal(got, expected))
    finite = expected.isfinite()
    if not torch.equal(finite, got.isfinite()):
        return False
    if not torch.equal(expected.isnan(), got.isnan()):
        return False
    inf = expected.isinf()
    if not torch.equal(got[inf], expected[inf]):
        return False
    if not bool(finite.any()):
        return True
    e, g = expected[finite], got[finite]
    if rtol is None:
        rtol = max(1e-4, 10 * torch.finfo(expected.dtype).eps)
    bound = rtol * float(e.abs().max()) + atol
    return float((g - e).abs().max()) <= bound


def tensors_of(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensor arguments, positional first, then keyword by name: a graph's inputs."""
    return [a for a in (*args, *(kwargs[k] for k in sorted(kwargs))) if isinstance(a, torch.Tensor)]


def with_tensors(args: tuple, kwargs: dict, values: tuple[torch.Tensor, ...]) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with their tensors replaced by ``values`` (in :func:`tensors_of`'s order)."""
    it = iter(values)
    new_args = tuple(next(it) if isinstance(a, torch.Tensor) else a for a in args)
    new_kwargs = {k: next(it) if isinstance(kwargs[k], torch.Tensor) else kwargs[k] for k in sorted(kwargs)}
    return new_args, new_kwargs
