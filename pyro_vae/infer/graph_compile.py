"""A captured graph compiled by TorchInductor directly, without TorchDynamo.

A captured graph (:func:`~pyro_vae.infer.graph_capture.capture_graph`) is already what
``torch.compile``'s front end would make of a program: ATen operations on tensors of fixed
shapes. Passing it through ``torch.compile`` traces it again with TorchDynamo and checks
Dynamo's guards before every call; the capture's own structure key, its check of the
parameters it reads (:meth:`~pyro_vae.infer.graph_capture.CapturedGraph.current`) and its
checked replays already guard it. :func:`compile_graph` hands the graph to Inductor
(``torch._inductor.compile_fx.compile_fx``, what ``torch.compile``'s ``"inductor"`` backend
calls) with the tensors it reads as attributes (parameters, buffers) lifted to inputs, so
that AOTAutograd differentiates with respect to them and writes a buffer's in-place update
back. On the training benchmark's step (784-400-50 VAE, batch 128, 2 cores) this took
0.20-0.27 ms a step off the graph compiled through ``torch.compile`` (docs/benchmarks.md).

A training step's graph is compiled together with its backward pass (:func:`joint_graph`):
one graph of the objective, the surrogate and the parameters' gradients, run without the
autograd engine, its gradients put in the parameters' ``.grad`` as ``backward()`` would
(:class:`Gradients`). That took the compiled step from 0.76x to 0.65x the hand-written
eager PyTorch step (same host). It is how JAX's jitted steps work: a traced function of
the parameters that returns its gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import fx

from pyro_vae.infer.graph_simplify import attribute


def lift_constants(module: fx.GraphModule) -> tuple[fx.GraphModule, list[torch.Tensor]]:
    """A copy of ``module`` whose tensor attributes (``get_attr`` nodes) are inputs after its
    own, and those tensors in that order: ``copy(*inputs, *tensors)`` computes
    ``module(*inputs)``. Attributes that are not tensors stay attributes."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(module.graph, {}))
    last = next((n for n in reversed(graph.nodes) if n.op == "placeholder"), None)
    tensors: list[torch.Tensor] = []
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        value = attribute(module, str(node.target))
        if not isinstance(value, torch.Tensor):
            continue
        with graph.inserting_after(last):  # None: at the graph's beginning
            last = graph.placeholder(f"_constant_{len(tensors)}")
        node.replace_all_uses_with(last)
        graph.erase_node(node)
        tensors.append(value)
    for node in graph.nodes:
        # the recorded run's values: the copy must not keep them alive (Inductor traces the
        # graph anew from the inputs), and its C++ wrapper would read the placeholders' as
        # the inputs' (a constant's has none)
        node.meta.pop("val", None)
    graph.lint()
    return fx.GraphModule(module, graph), tensors


def compile_graph(module: fx.GraphModule, inputs: list[torch.Tensor]) -> Callable[..., Any]:
    """``module`` compiled by TorchInductor for inputs like ``inputs`` (their shapes, dtypes,
    devices and gradient flags, and the grad mode now), as a function of those inputs: its
    forward and, through AOTAutograd, its backward, with PyTorch's own random operations kept
    (``fallback_random``: the same draws as the graph's). The tensors ``module`` reads as
    attributes are passed at every call (:func:`lift_constants`), so gradients reach them.

    The kernels are called from a C++ wrapper (Inductor's ``cpp_wrapper``) rather than from
    generated Python: 0.09-0.18 ms a training step less on the benchmark VAE
    (docs/benchmarks.md). Where that cannot be built the Python wrapper is tried; raises
    what Inductor raises when neither can (an operator it does not know, no C++ compiler).
    Inductor's and AOTAutograd's on-disk caches serve a later compile of the same graph, in
    this process or another (:func:`_cached`)."""
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx

    lifted, constants = lift_constants(module)
    example = [*inputs, *constants]
    try:
        with _cached(), config.patch(fallback_random=True, cpp_wrapper=True):
            compiled = compile_fx(lifted, example)
    except Exception:  # any failure of the C++ wrapper: Inductor's Python one
        with _cached(), config.patch(fallback_random=True):
            compiled = compile_fx(lifted, example)

    def run(*tensors: torch.Tensor) -> Any:
        return compiled(*tensors, *constants)

    return run


class Gradients:
    """The gradients a compiled step computed with its forward pass (:func:`joint_graph`):
    ``values[i]`` is the gradient for ``leaves[i]``, not yet in its ``.grad``."""

    __slots__ = ("leaves", "values")

    def __init__(self, leaves: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.leaves = leaves
        self.values = values

    def of(self, leaf: torch.Tensor) -> torch.Tensor | None:
        """The gradient for ``leaf`` (``None``: the differentiated output does not reach it)."""
        for known, value in zip(self.leaves, self.values, strict=True):
            if known is leaf:
                return value
        return None

    def accumulate(self) -> None:
        """Into the leaves' ``.grad`` as ``backward()`` puts them: a leaf without a gradient
        takes this one (copied to the leaf's strides where they differ), one with a
        gradient adds it. Through the autograd engine instead
        (``torch.autograd.backward`` of the leaves, which runs their hooks, at the cost of a
        copy of each gradient) where a leaf has hooks of its own (``register_hook``,
        ``register_post_accumulate_grad_hook``) or ``torch.distributed`` is initialized
        (``DistributedDataParallel`` all-reduces from hooks on the leaves' gradient
        accumulators, which Python does not list). Other hooks registered on those
        accumulators from C++ would not run: use the uncompiled step with such code."""
        hooked = any(leaf._backward_hooks or leaf._post_accumulate_grad_hooks for leaf in self.leaves)
        if hooked or _distributed():
            torch.autograd.backward(self.leaves, self.values)
            return
        with torch.no_grad():
            for leaf, value in zip(self.leaves, self.values, strict=True):
                if leaf.grad is None:
                    # autograd's layout contract: a gradient strided as its parameter
                    same = value.stride() == leaf.stride()
                    leaf.grad = value if same else torch.empty_like(leaf).copy_(value)
                else:
                    leaf.grad.add_(value)


def _cached() -> Any:
    """A tracing context whose fake-tensor mode has a shape environment: without one (as
    when Inductor is called directly, not from TorchDynamo) AOTAutograd's and Inductor's
    on-disk caches are bypassed ("No shape env") and every compile generates its code anew."""
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    return tracing(TracingContext(FakeTensorMode(shape_env=ShapeEnv())))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class JointGraph(NamedTuple):
    """A graph's outputs and the gradients of one of them, as one graph (:func:`joint_graph`)."""

    module: fx.GraphModule
    """``module(*inputs, *constants)``: the outputs, detached, then the gradients."""
    constants: list[torch.Tensor]
    leaves: list[torch.Tensor]
    outputs: int

    def runner(self, compiled: Callable[..., Any]) -> Callable[..., tuple]:
        """``compiled`` (this graph, compiled) as a function of the inputs returning the
        outputs and their :class:`Gradients`, run without autograd."""
        constants, leaves, outputs = self.constants, self.leaves, self.outputs

        def run(*tensors: torch.Tensor) -> tuple:
            with torch.no_grad():
                values = compiled(*tensors, *constants)
            return (*values[:outputs], Gradients(leaves, list(values[outputs:])))

        return run


def joint_graph(
    module: fx.GraphModule, inputs: list[torch.Tensor], *, differentiate: int, grad_output: float
) -> JointGraph | None:
    r"""``module``'s outputs and the gradients of ``grad_output`` times its output
    ``differentiate`` (a scalar) with respect to every constant that requires a gradient,
    traced as one graph (the forward and the backward operations, recorded by running both
    once on ``inputs``), so that a compiled step runs no autograd engine: Inductor fuses
    across the two passes and the step's gradients go straight to the leaves
    (:meth:`Gradients.accumulate`). On the benchmark VAE's training step this took about
    1 ms off the compiled forward under autograd (docs/benchmarks.md).

    ``None`` when there is nothing to differentiate (grad mode off, no constant requiring a
    gradient), an input requires a gradient (its gradient would belong to a tensor of the
    call, not of the graph) or a constant requiring a gradient is not a leaf (a tensor the
    program closes over, computed from parameters outside it: ``backward()`` would carry
    its gradient on to them): compile the forward alone then (:func:`compile_graph`).
    The trace runs the graph, so call it where its draws and buffer updates are undone."""
    from torch.fx.experimental.proxy_tensor import make_fx

    if not torch.is_grad_enabled() or any(t.requires_grad for t in inputs):
        return None
    lifted, constants = lift_constants(module)
    wrt = [i for i, c in enumerate(constants) if c.requires_grad]
    if not wrt or any(constants[i].grad_fn is not None for i in wrt):
        return None  # nothing to differentiate, or a constant whose gradient flows on past it
    count = len(inputs)
    reached: list[int] = []
    n_outputs: list[int] = []

    def joint(*values: torch.Tensor) -> tuple:
        outputs = lifted.forward(*values)
        target = outputs[differentiate] if isinstance(outputs, (tuple, list)) else None
        if target is None or not target.requires_grad:
            raise _NothingToDifferentiate
        n_outputs[:] = [len(outputs)]
        grads = torch.autograd.grad(
            target,
            [values[count + i] for i in wrt],
            grad_outputs=torch.full_like(target, grad_output),
            allow_unused=True,
        )
        reached[:] = [i for i, g in zip(wrt, grads, strict=True) if g is not None]
        return (*(o.detach() for o in outputs), *(g for g in grads if g is not None))

    try:
        traced = make_fx(joint)(*inputs, *constants)
    except _NothingToDifferentiate:
        return None
    for node in traced.graph.nodes:
        node.meta.pop("val", None)  # fake tensors of the trace, each of its own mode
        node.meta.pop("tensor_meta", None)
    return JointGraph(traced, constants, [constants[i] for i in reached], n_outputs[0])


class _NothingToDifferentiate(Exception):
    """The traced output is not a tuple, or the one to differentiate needs no gradient."""
