"""A training loss whose tensor computation is captured once per program structure and replayed."""

from __future__ import annotations

import operator
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro.poutine.runtime import _PYRO_STACK
from torch import fx, nn

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import CaptureFallbackWarning, InputError
from pyro_vae.infer.graph_replay import replay_function
from pyro_vae.infer.graph_simplify import SimplifiedGraph, attribute, simplify_graph
from pyro_vae.infer.loss import ParticleLoss, program_key
from pyro_vae.infer.modes import BufferSnapshot

_MAX_STRUCTURES_COUNTED = 1024
_TRAINING = operator.attrgetter("training")


def capturable(loss: Any) -> str:
    """Why ``loss``'s training step cannot be captured by :class:`CapturedLoss`, or ``""``.

    A pyro_vae :class:`~pyro_vae.infer.ParticleLoss` can be, unless it keeps state of its own
    that Python updates inside the step (a baseline's running averages), which a replayed
    graph would skip; state declared by
    :meth:`~pyro_vae.infer.ParticleLoss.capture_key` and advanced by
    :meth:`~pyro_vae.infer.ParticleLoss.after_step` (``RelaxedELBO``'s temperature schedule) is
    fine."""
    if not isinstance(loss, ParticleLoss):
        return f"CapturedLoss wraps a pyro_vae ParticleLoss, got {type(loss).__name__}"
    stateless = type(loss).state_dict is ParticleLoss.state_dict or loss.state_dict() == {}
    declared = type(loss).capture_key is not ParticleLoss.capture_key  # state in capture_key/after_step
    if not (stateless or declared) or type(loss).loss_and_grads is not ParticleLoss.loss_and_grads:
        return (
            f"{type(loss).__name__} has state of its own (updated in Python every step), which a "
            "captured graph would freeze; train it without CapturedLoss"
        )
    return ""


def _describe(value: Any) -> Any:
    """What of an argument a captured graph depends on: a tensor's shape, dtype, device and
    gradient flag (its values are graph inputs); any other value itself (``None`` when unhashable)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.shape, value.dtype, value.device, value.requires_grad)
    try:
        hash(value)
    except TypeError:
        return None
    return (type(value), value)


@dataclass
class _Captured:
    """One structure's graph, the modules whose buffers it updates, and its replays so far."""

    run: Callable
    modules: list[nn.Module]
    param_names: tuple[str, ...]
    param_tensors: tuple[torch.Tensor, ...]
    simplified: SimplifiedGraph
    replays: int = 0
    check: bool = False
    minus_one: torch.Tensor | None = None

    def current(self) -> bool:
        """Whether the parameter store still holds the tensors the graph reads (a parameter
        replaced by another tensor, or deleted, needs a new graph) and the constants whose
        values the graph's simplification relied on are unchanged."""
        store = pyro.get_param_store().named_parameters().mapping
        same = all(map(operator.is_, map(store.get, self.param_names), self.param_tensors))
        return same and self.simplified.current()

    def backward(self, surrogate: torch.Tensor) -> None:
        """``(-surrogate).backward()`` without the negation's two operations: the same
        gradients (the negation's backward hands on exactly -1)."""
        if self.minus_one is None:
            self.minus_one = torch.full((), -1.0, dtype=surrogate.dtype, device=surrogate.device)
        surrogate.backward(self.minus_one)

    def due(self) -> bool:
        """Whether this replay is checked: the 1st, 2nd, 4th, 8th, ... and any asked for."""
        return self.check or (self.replays & (self.replays - 1)) == 0


class CapturedLoss:
    """``loss`` (a :class:`~pyro_vae.infer.ParticleLoss`) with its training step replayed from a
    captured graph once the program's structure is known; :func:`~pyro_vae.train.fit`'s
    default step (``capture_after=20``).

    The model and guide stay Pyro programs; what is captured is the tensor computation one
    run of them performs: :func:`torch.fx.experimental.proxy_tensor.make_fx` records the ATen
    operations of ``loss.objective_and_surrogate`` (the effect handlers, the site recorder
    and the per-site bookkeeping are Python that produces no operation, so the graph has
    none of them), and :func:`~pyro_vae.infer.graph_simplify.simplify_graph` drops the operations whose
    results are unused and arithmetic by identities (a standard-normal prior's :math:`/1`).
    Replaying the graph runs the same operations, random draws included, in the same order:
    the same values and gradients as the eager step for the same random state (tested
    bitwise) run with Pyro's validation off, as :func:`~pyro_vae.train.fit`'s loop runs it
    (with validation on, Pyro evaluates some densities in another order: equal to float
    rounding). With ``compile=True`` the graph is also compiled by ``torch.compile``
    (TorchInductor, with PyTorch's own random operations kept, so draws are unchanged; values
    and gradients equal to float rounding, tested); compiling takes tens of seconds once, for
    long training runs.

    A graph is kept per *structure*: the programs (their identity), the shapes, dtypes and
    devices of the tensor arguments and the values of the others, the ``training`` flags of
    the modules the programs are methods of, and the gradient mode; it is used while the
    parameter store holds the parameter tensors it reads (others' parameters may come and
    go). A structure runs eagerly its first ``capture_after`` times (the first plans the
    program and checks it, as without capture); then it is captured, and checked
    at once: the graph's objective must equal an eager run's at the same random state, else
    the structure stays eager (``fallback_reason`` says why). Beyond ``max_graphs``
    structures (a KL warm-up changing ``kl_weight`` every step) the new ones run eagerly.
    Steps run inside enclosing Pyro handlers (``pyro.infer.SVI``'s parameter capture) are
    always eager, so that the handlers see the sites.

    What a graph cannot see is Python state outside the structure: a program that reads an
    attribute, a global or Python's own random numbers and changes with them. Such a program
    is caught by re-checking replays against eager runs: the 1st, 2nd, 4th, 8th, ... replay
    of every graph, and the next one after :meth:`check_next` (``fit`` calls it every
    epoch). A check that fails undoes the replay (random state and the modules' buffers),
    runs the step eagerly, keeps that structure eager from then on and warns
    (:class:`~pyro_vae.errors.CaptureFallbackWarning`); so does a replay that raises (a
    shape that depends on data values). Python control flow that reads tensor *values*
    (``if x.sum() > 0``, ``.item()``) cannot be captured at all (PyTorch refuses to read a
    value while tracing): the structure stays eager. Pyro's argument validation, which
    reads values, is off in the captured graph (it ran in the eager steps). Losses with
    state of their own (baselines updated in Python) are refused (:func:`capturable`).

    :param loss: the loss to run (``inner``); ``loss`` and ``differentiable_loss`` stay eager.
    :param compile: also compile each captured graph with ``torch.compile``.
    :param capture_after: eager runs of a structure before it is captured (at least 1).
    :param max_graphs: structures captured at most.
    """

    def __init__(
        self, loss: ParticleLoss, *, compile: bool = False, capture_after: int = 1, max_graphs: int = 4
    ) -> None:
        reason = capturable(loss)
        if reason:
            raise InputError(reason)
        check_positive_int(capture_after, "capture_after")
        self.inner = loss
        self.compile = compile
        self.capture_after = capture_after
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, _Captured | None] = {}
        self._seen: Counter[tuple] = Counter()
        self._module_lists: dict[int, tuple[Any, list[nn.Module]]] = {}
        self.fallback_reason = ""
        self.captured_steps = 0

    # ------------------------------------------------------------------ Pyro's ELBO interface
    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """As ``loss.loss_and_grads``, from the structure's captured graph when there is one."""
        key = self.structure(model, guide, args, kwargs)
        captured = self._graph(key, model, guide, args, kwargs)
        if captured is None:
            return self.inner.loss_and_grads(model, guide, *args, **kwargs)
        captured.replays += 1
        tensors = _tensors(args, kwargs)
        if captured.due():
            result = self._checked_replay(key, captured, model, guide, args, kwargs, tensors)
        else:
            try:
                result = captured.run(*tensors)
            except Exception as e:  # a shape that depends on data values: eager from now on
                result = None
                self._drop(key, f"a replay failed: {type(e).__name__}: {e}")
        if result is None:
            return self.inner.loss_and_grads(model, guide, *args, **kwargs)
        objective, surrogate = result
        if surrogate.requires_grad:
            captured.backward(surrogate)
        self.inner.after_step()
        self.captured_steps += 1
        return -float(objective.detach())

    def check_next(self) -> None:
        """Check the next replay of every graph against an eager run (see the class docs)."""
        for captured in self._graphs.values():
            if captured is not None:
                captured.check = True

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        return self.inner.loss(model, guide, *args, **kwargs)

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        return self.inner.differentiable_loss(model, guide, *args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def reset(self) -> None:
        self.inner.reset()

    # ------------------------------------------------------------------ capture
    def structure(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple | None:
        """The key of a captured graph (``None``: this call cannot be captured)."""
        if _PYRO_STACK:
            return None
        names = tuple(sorted(kwargs))
        parts: list[Any] = [
            program_key(model),
            program_key(guide),
            torch.is_grad_enabled(),
            names,
            self.inner.capture_key(),
        ]
        for value in (*args, *(kwargs[k] for k in names)):
            described = _describe(value)
            if described is None:
                return None
            parts.append(described)
        parts.append(tuple(map(_TRAINING, self._modules(model))))
        parts.append(tuple(map(_TRAINING, self._modules(guide))))
        return tuple(parts)

    def _modules(self, fn: Callable) -> list[nn.Module]:
        """The modules of ``fn``'s owner, listed once per owner (walking them every step costs
        more than the rest of the structure)."""
        owner = getattr(fn, "__self__", None)
        if not isinstance(owner, nn.Module):
            return []
        found = self._module_lists.get(id(owner))
        if found is None or found[0] is not owner:
            found = self._module_lists[id(owner)] = (owner, list(owner.modules()))
        return found[1]

    def _graph(
        self, key: tuple | None, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> _Captured | None:
        if key is None:
            return None
        if key in self._graphs:
            captured = self._graphs[key]
            if captured is None or captured.current():
                return captured
            del self._graphs[key]  # its parameters were replaced: eager, then captured anew
            self._seen[key] = 0
        if key in self._seen or len(self._seen) < _MAX_STRUCTURES_COUNTED:
            self._seen[key] += 1
        if self._seen[key] <= self.capture_after:  # eager: the first run plans and checks the program
            return None
        if len(self._graphs) >= self.max_graphs:
            return None
        self._graphs[key] = captured = self._capture(model, guide, args, kwargs)
        return captured

    def _drop(self, key: tuple, reason: str) -> None:
        self.fallback_reason = reason
        self._graphs[key] = None
        warnings.warn(
            f"{reason}; this structure's steps run eagerly from now on", CaptureFallbackWarning, stacklevel=3
        )

    def _checked_replay(
        self,
        key: tuple,
        captured: _Captured,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        tensors: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A replay checked against an eager run at the same random state; ``None`` (the replay
        undone) when they differ."""
        captured.check = False
        devices = _cuda_devices(tensors)
        state = _rng_state(devices)
        with torch.no_grad(), BufferSnapshot(), pyro.validation_enabled(False):
            expected = self.inner.objective_and_surrogate(model, guide, args, kwargs)[0]
        _set_rng_state(state, devices)
        buffers = BufferSnapshot.of(captured.modules)
        try:
            result = captured.run(*tensors)
            got = result[0].detach()
        except Exception as e:
            result, got, why = None, None, f"a replay failed: {type(e).__name__}: {e}"
        else:
            why = (
                ""
                if _agree(got, expected, self.compile)
                else f"a replay's objective ({float(got)}) differs from the eager one ({float(expected)}): "
                "the program's Python depends on state outside its arguments and parameters"
            )
        if why:
            buffers.restore()
            _set_rng_state(state, devices)
            self._drop(key, why)
            return None
        return result

    def _capture(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> _Captured | None:
        from torch.fx.experimental.proxy_tensor import make_fx

        tensors = _tensors(args, kwargs)

        def run(*values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a, k = _with_tensors(args, kwargs, values)
            return self.inner.objective_and_surrogate(model, guide, a, k)

        devices = _cuda_devices(tensors)
        # Tracing and the check run the program twice more: neither may change a later draw or
        # a running statistic of the program's modules.
        with (
            torch.random.fork_rng(devices=devices),
            BufferSnapshot() as snapshot,
            pyro.validation_enabled(False),
        ):
            try:
                simplified = simplify_graph(make_fx(run)(*tensors))
                state = _rng_state(devices)
                eager = run(*tensors)  # at the random state the replay gets
                leaves = _leaves_of(eager[1])
                expected = _with_gradients(eager, leaves)
                for fold in (True, False):
                    if not fold:  # folding reordered a gradient's sum: the graph as traced
                        if not simplified.folds:
                            break
                        simplified = simplify_graph(make_fx(run)(*tensors), fold=False)
                    # the graph's forward, not the module: a module's call would run global
                    # module hooks, which would take the graph's constants (others' buffers)
                    graph: Callable
                    if self.compile:
                        read = _constants(simplified.module)
                        graph = torch.compile(
                            simplified.module.forward, dynamic=False, options={"fallback_random": True}
                        )
                    else:
                        replay = replay_function(simplified.module)
                        graph, read = replay.run, list(replay.constants)
                    _set_rng_state(state, devices)
                    got = _with_gradients(graph(*tensors), leaves)
                    differs = [
                        i
                        for i, (g, e) in enumerate(zip(got, expected, strict=True))
                        if not _agree(g, e, self.compile)
                    ]
                    if not differs:
                        break
            except Exception as e:
                self.fallback_reason = f"capture failed: {type(e).__name__}: {e}"
                return None
            modules = snapshot.modules
        if differs:
            what = (
                "objective differs from the eager one"
                if differs[0] == 0
                else "gradients differ from the eager ones"
            )
            self.fallback_reason = (
                f"the captured graph's {what}: the program's Python depends on tensor values or on "
                "state outside its arguments and parameters"
            )
            return None
        return _Captured(graph, modules, *_params_read(read), simplified)


def _with_gradients(
    result: tuple[torch.Tensor, torch.Tensor], leaves: list[torch.Tensor]
) -> list[torch.Tensor]:
    """The objective and the gradients of the negated surrogate with respect to ``leaves``
    (NaN for a leaf it does not reach), without touching any ``.grad``."""
    objective, surrogate = result
    if not leaves or not surrogate.requires_grad:
        return [objective.detach(), *(torch.full_like(leaf, torch.nan) for leaf in leaves)]
    grads = torch.autograd.grad(-surrogate, leaves, allow_unused=True)
    unreached = [torch.full_like(leaf, torch.nan) for leaf in leaves]
    return [objective.detach(), *(u if g is None else g for g, u in zip(grads, unreached, strict=True))]


def _leaves_of(surrogate: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors ``surrogate.backward()`` would accumulate gradients into, in the
    order a walk of its autograd graph meets them."""
    leaves: list[torch.Tensor] = []
    seen: set[int] = set()
    stack = [surrogate.grad_fn] if surrogate.requires_grad else []
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        variable = getattr(fn, "variable", None)
        if variable is not None:
            leaves.append(variable)
            continue
        stack.extend(f for f, _ in reversed(fn.next_functions))
    return leaves


def _constants(graph: fx.GraphModule) -> list[Any]:
    """The tensors ``graph`` reads as attributes."""
    return [attribute(graph, str(n.target)) for n in graph.graph.nodes if n.op == "get_attr"]


def _params_read(constants: list[Any]) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    """The names and tensors of the parameter store's entries among a graph's constants."""
    read = {id(t) for t in constants}
    found = [(name, p) for name, p in pyro.get_param_store().named_parameters() if id(p) in read]
    return tuple(name for name, _ in found), tuple(p for _, p in found)


def _agree(got: torch.Tensor, expected: torch.Tensor, compiled: bool) -> bool:
    """Bitwise equal (a replay runs the eager operations); to float rounding when compiled."""
    if compiled:
        return bool(torch.allclose(got, expected, rtol=1e-5, atol=1e-5, equal_nan=True))
    return bool(torch.equal(got, expected)) or bool(got.isnan().all() and expected.isnan().all())


def _cuda_devices(tensors: list[torch.Tensor]) -> list[torch.device]:
    return [t.device for t in tensors if t.device.type == "cuda"][:1]


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [a for a in (*args, *(kwargs[k] for k in sorted(kwargs))) if isinstance(a, torch.Tensor)]


def _with_tensors(args: tuple, kwargs: dict, values: tuple[torch.Tensor, ...]) -> tuple[tuple, dict]:
    it = iter(values)
    new_args = tuple(next(it) if isinstance(a, torch.Tensor) else a for a in args)
    new_kwargs = {k: next(it) if isinstance(kwargs[k], torch.Tensor) else kwargs[k] for k in sorted(kwargs)}
    return new_args, new_kwargs


def _rng_state(devices: list[torch.device]) -> tuple:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng_state(state: tuple, devices: list[torch.device]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(devices, state[1], strict=True):
        torch.cuda.set_rng_state(s, d)
