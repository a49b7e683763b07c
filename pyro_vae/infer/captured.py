"""A training loss whose tensor computation is captured once per program structure and replayed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.infer.graph_capture import (
    TRAINING,
    CapturedGraph,
    GraphCache,
    capture_graph,
    describe_arguments,
    tensors_of,
    with_tensors,
)
from pyro_vae.infer.loss import ParticleLoss, program_key
from pyro_vae.infer.onednn_matmul import resolve_matmul


def check_compile(compile: bool) -> None:
    """Raise :class:`~pyro_vae.errors.InputError` for ``compile=True`` where TorchInductor cannot
    compile: it generates C++ for the CPU, so it needs a C++ compiler (``$CXX`` or ``g++`` /
    ``clang++`` on ``PATH``). Checked before any step runs, rather than as a failed capture."""
    if not compile:
        return
    try:
        from torch._inductor import cpp_builder

        cpp_builder.get_cpp_compiler()
    except Exception as e:  # any failure to find one is the same answer
        raise InputError(
            f"compile=True: TorchInductor needs a C++ compiler and found none ({type(e).__name__}: {e}); "
            "install g++ or clang++, or set CXX"
        ) from None


def compiler_found() -> bool:
    """Whether TorchInductor finds a C++ compiler here (:func:`check_compile`): what the
    defaults that compile long runs (:func:`~pyro_vae.train.step.resolve_compile`,
    :class:`~pyro_vae.infer.captured_log_weights.CapturedLogWeights` ``compile=None``) ask."""
    try:
        check_compile(True)
    except InputError:
        return False
    return True


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


class CapturedLoss:
    """``loss`` (a :class:`~pyro_vae.infer.ParticleLoss`) with its training step replayed from a
    captured graph once the program's structure is known; :func:`~pyro_vae.train.fit`'s
    default step (``capture_after=20``).

    The model and guide stay Pyro programs; what is captured is the tensor computation one
    run of them performs: :func:`~pyro_vae.infer.graph_record.record_graph` records the ATen
    operations of ``loss.objective_and_surrogate`` (the effect handlers, the site recorder
    and the per-site bookkeeping are Python that produces no operation, so the graph has
    none of them), and :func:`~pyro_vae.infer.graph_simplify.simplify_graph` drops the operations whose
    results are unused and arithmetic by identities (a standard-normal prior's :math:`/1`).
    Replaying the graph runs the same operations, random draws included, in the same order:
    the same values and gradients as the eager step for the same random state (tested
    bitwise) run with Pyro's validation off, as :func:`~pyro_vae.train.fit`'s loop runs it
    (with validation on, Pyro evaluates some densities in another order: equal to float
    rounding). With ``compile=True`` the checked graph is then compiled by TorchInductor, without
    TorchDynamo (:func:`~pyro_vae.infer.graph_compile.compile_graph`; PyTorch's own random
    operations kept, so draws are unchanged), together with its backward pass as one graph
    run without the autograd engine (:func:`~pyro_vae.infer.graph_compile.joint_graph`; the
    gradients go into ``.grad`` as ``backward()`` puts them), and
    the compiled graph kept when its values and gradients equal the checked graph's to float
    rounding (tested), else the checked graph (:attr:`compile_note` says why; with
    ``matmul="onednn"``, first the graph on oneDNN's products, then on PyTorch's); compiling
    takes seconds a structure once (for the benchmark VAE 13-27 s with TorchInductor's cache
    cold, 3-7 s warm), for long training runs; ``compile_after`` compiles only the structures that
    run often.

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
    :param compile: also compile each captured graph with TorchInductor
        (:func:`~pyro_vae.infer.graph_compile.compile_graph`).
    :param capture_after: eager runs of a structure before it is captured (at least 1).
    :param compile_after: with ``compile=True``, runs of a structure before its graph is
        compiled: ``None`` (the default) compiles it at capture; a larger count replays the
        uncompiled graph until then and compiles only the structures that run that often, so
        that a structure seen once an epoch (a smaller last batch) is never compiled for the
        few steps it would speed up (:data:`~pyro_vae.train.step.FIT_COMPILE_AFTER`). Counted
        in :meth:`capture_state`, so a resumed run compiles where the run it continues did.
    :param max_graphs: structures captured at most.
    :param matmul: the kernels of the graph's float32 CPU matrix products: ``"aten"`` (the
        graph's own, PyTorch's BLAS: bitwise the eager step) or ``"onednn"`` (oneDNN's,
        :mod:`~pyro_vae.infer.onednn_matmul`: values and gradients equal to the eager step's to
        float rounding, checked so; the products twice as fast where the BLAS is slow, as MKL was
        on the AMD EPYC host measured in docs/benchmarks.md); ``"auto"`` resolves by the machine
        (:func:`~pyro_vae.infer.onednn_matmul.resolve_matmul`).
    """

    def __init__(
        self,
        loss: ParticleLoss,
        *,
        compile: bool = False,
        capture_after: int = 1,
        compile_after: int | None = None,
        max_graphs: int = 4,
        matmul: str = "aten",
    ) -> None:
        reason = capturable(loss)
        if reason:
            raise InputError(reason)
        check_compile(compile)
        if compile_after is not None:
            check_positive_int(compile_after, "compile_after")
        self.compile_after = capture_after if compile_after is None else max(compile_after, capture_after)
        self.inner = loss
        self.compile = compile
        self.matmul = resolve_matmul(matmul)
        self._cache = GraphCache(capture_after=capture_after, max_graphs=max_graphs)
        self._module_lists: dict[int, tuple[Any, list[nn.Module]]] = {}
        self.captured_steps = 0

    @property
    def capture_after(self) -> int:
        return self._cache.capture_after

    @property
    def max_graphs(self) -> int:
        return self._cache.max_graphs

    @property
    def fallback_reason(self) -> str:
        """Why the last structure that could not be captured, or was dropped, runs eagerly."""
        return self._cache.fallback_reason

    @property
    def kernels(self) -> str:
        """What ran the captured graphs' matrix products: ``"onednn"`` if any graph runs them on
        oneDNN's kernels (``matmul="onednn"``, the copy accepted at capture), else ``"aten"``."""
        graphs = [g for g in self._cache.graphs.values() if g is not None]
        return "onednn" if any(g.kernels == "onednn" for g in graphs) else "aten"

    @property
    def compiled(self) -> bool:
        """Whether any captured graph runs compiled by TorchInductor (``compile=True``, the
        compiled graph accepted at capture; see :attr:`compile_note` when it was not)."""
        return any(g is not None and g.compiled for g in self._cache.graphs.values())

    @property
    def compile_note(self) -> str:
        """Why a graph was kept uncompiled under ``compile=True``, or compiled on PyTorch's
        kernels rather than oneDNN's asked for (``""``: neither happened)."""
        return next((g.note for g in self._cache.graphs.values() if g is not None and g.note), "")

    @property
    def _graphs(self) -> dict[tuple, CapturedGraph | None]:
        return self._cache.graphs

    # ------------------------------------------------------------------ Pyro's ELBO interface
    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """As ``loss.loss_and_grads``, from the structure's captured graph when there is one."""
        key = self.structure(model, guide, args, kwargs)
        captured = self._cache.get(
            key,
            lambda: self._capture(model, guide, args, kwargs, key),
            lambda: _structure_name(model, guide, key),
        )
        if captured is None:
            return self.inner.loss_and_grads(model, guide, *args, **kwargs)
        assert key is not None
        if not (captured.compiled or captured.note) and self._compile_due(key):
            recaptured = self._cache.capture(key, lambda: self._capture(model, guide, args, kwargs, key))
            if recaptured is None:
                return self.inner.loss_and_grads(model, guide, *args, **kwargs)
            captured = recaptured

        def eager() -> torch.Tensor:
            return self.inner.objective_and_surrogate(model, guide, args, kwargs)[0]

        result = self._cache.replay(key, captured, tensors_of(args, kwargs), eager, value=_objective)
        if result is None:
            return self.inner.loss_and_grads(model, guide, *args, **kwargs)
        objective, surrogate = result[0], result[1]
        if len(result) > 2:  # compiled with its gradients (graph_compile.joint_graph)
            result[2].accumulate()
        elif surrogate.requires_grad:
            # (-surrogate).backward() without the negation's two operations: the same
            # gradients (the negation's backward hands on exactly -1), kept with the graph
            if captured.info is None:
                captured.info = torch.full((), -1.0, dtype=surrogate.dtype, device=surrogate.device)
            backward_with(surrogate, captured.info)
        self.inner.after_step()
        self.captured_steps += 1
        return -float(objective.detach())

    def check_next(self) -> None:
        """Check the next replay of every graph against an eager run (see the class docs)."""
        self._cache.check_next()

    def capture_state(self) -> dict[str, int]:
        """How often each structure has run, by a name that holds across processes (the
        programs' qualified names and the rest of the structure): saved in
        :func:`~pyro_vae.train.fit`'s checkpoints, so that a resumed run replays where the
        run it continues replayed (:meth:`load_capture_state`)."""
        return self._cache.state()

    def load_capture_state(self, state: dict[str, int]) -> None:
        """Continue from :meth:`capture_state`: a structure the saved run had captured is
        captured at its first step here and replayed, one it ran eagerly for good stays eager,
        and the others count on from where they were. With PyTorch's kernels this changes no
        bit (replay and eager step agree bitwise); with oneDNN's or compiled graphs it makes a
        resumed run the uninterrupted one bit for bit, where eager steps in its place would
        agree only to float rounding."""
        self._cache.load_state(state)

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
        arguments = describe_arguments(args, kwargs)
        if arguments is None:
            return None
        return (
            program_key(model),
            program_key(guide),
            torch.is_grad_enabled(),
            self.inner.capture_key(),
            arguments,
            tuple(map(TRAINING, self._modules(model))),
            tuple(map(TRAINING, self._modules(guide))),
        )

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

    def _compile_due(self, key: tuple) -> bool:
        """Whether structure ``key``'s graph is compiled: ``compile=True`` and it has run more
        than ``compile_after`` times."""
        return self.compile and self._cache.seen[key] > self.compile_after

    def _capture(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, key: tuple
    ) -> CapturedGraph | str:
        def run(*values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a, k = with_tensors(args, kwargs, values)
            return self.inner.objective_and_surrogate(model, guide, a, k)

        return capture_graph(
            run,
            tensors_of(args, kwargs),
            compile=self._compile_due(key),
            comparable=_objective_and_gradients,
            matmul=self.matmul,
            differentiate=1,  # a compiled step: the surrogate's gradients with its forward,
            grad_output=-1.0,  # of the negated surrogate, as the replay's backward below
        )


_ENGINE_RUN_BACKWARD: Callable[..., Any] | None = getattr(torch.autograd.graph, "_engine_run_backward", None)
"""The call ``torch.autograd.backward`` makes into the engine after its checks (``None`` in a
PyTorch without it), looked up once rather than at every replayed step."""


def backward_with(output: torch.Tensor, gradient: torch.Tensor) -> None:
    """``output.backward(gradient)`` for a ``gradient`` of ``output``'s shape, dtype and device
    (the replay's own scalar): PyTorch's autograd engine run directly, without
    ``torch.autograd.backward``'s Python check of the gradient's shape, whose first call in a
    process imports SymPy (0.21-0.24 s on the AVX-512 AMD host of docs/benchmarks.md). The
    same engine call, so the same gradients; ``output.backward`` itself where this PyTorch
    has no such entry or a tensor subclass or a ``TorchFunctionMode`` would see the call.
    Raises as ``backward`` does for a gradient of another shape."""
    run = _ENGINE_RUN_BACKWARD
    if run is None or torch.overrides.has_torch_function((output, gradient)):
        output.backward(gradient)
        return
    if gradient.shape != output.shape:
        raise RuntimeError(
            f"Mismatch in shape: grad_output has a shape of {gradient.shape} and output has a "
            f"shape of {output.shape}"
        )
    run((output,), (gradient,), False, False, (), allow_unreachable=True, accumulate_grad=True)


def _structure_name(model: Callable, guide: Callable, key: tuple) -> str:
    """A structure's name across processes: the programs by qualified name (its key holds
    their identities), then the rest of the key (shapes, dtypes, values, modes)."""
    return repr((_qualified(model), _qualified(guide), key[2:]))


def _qualified(fn: Callable) -> str:
    fn = getattr(fn, "__func__", fn)
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _objective(result: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return result[0]


def _objective_and_gradients(
    eager: tuple[torch.Tensor, torch.Tensor],
) -> Callable[[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
    """What a captured step must reproduce: the objective, and the gradients of the leaves
    the eager step's surrogate reaches."""
    leaves = _leaves_of(eager[1])
    return lambda result: _with_gradients(result, leaves)


def _with_gradients(
    result: tuple[torch.Tensor, torch.Tensor], leaves: list[torch.Tensor]
) -> list[torch.Tensor]:
    """The objective and the gradients of the negated surrogate with respect to ``leaves``
    (NaN for a leaf it does not reach), without touching any ``.grad``."""
    objective, surrogate = result[0], result[1]
    grads: list[torch.Tensor | None]
    if len(result) > 2:  # compiled with its gradients (graph_compile.joint_graph)
        grads = [result[2].of(leaf) for leaf in leaves]
    elif leaves and surrogate.requires_grad:
        grads = list(torch.autograd.grad(-surrogate, leaves, allow_unused=True))
    else:
        grads = [None] * len(leaves)
    pairs = zip(grads, leaves, strict=True)
    return [objective.detach(), *(torch.full_like(leaf, torch.nan) if g is None else g for g, leaf in pairs)]


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
