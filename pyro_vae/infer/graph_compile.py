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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from pyro_vae.infer.graph_simplify import attribute


def lift_constants(module: fx.GraphModule) -> tuple[fx.GraphModule, list[torch.Tensor]]:
    """A copy of ``module`` whose tensor attributes (``get_attr`` nodes) are inputs after its
    own, and those tensors in that order: ``copy(*inputs, *tensors)`` computes
    ``module(*inputs)``. Attributes that are not tensors stay attributes."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(module.graph, {}))
    last = [n for n in graph.nodes if n.op == "placeholder"][-1:]
    tensors: list[torch.Tensor] = []
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        value = attribute(module, str(node.target))
        if not isinstance(value, torch.Tensor):
            continue
        where = graph.inserting_after(last[0]) if last else graph.inserting_before(next(iter(graph.nodes)))
        with where:
            placeholder = graph.placeholder(f"_constant_{len(tensors)}")
        node.replace_all_uses_with(placeholder)
        graph.erase_node(node)
        last = [placeholder]
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
    what Inductor raises when neither can (an operator it does not know, no C++ compiler)."""
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx

    lifted, constants = lift_constants(module)
    example = [*inputs, *constants]
    try:
        with config.patch(fallback_random=True, cpp_wrapper=True):
            compiled = compile_fx(lifted, example)
    except Exception:  # any failure of the C++ wrapper: Inductor's Python one
        with config.patch(fallback_random=True):
            compiled = compile_fx(lifted, example)

    def run(*tensors: torch.Tensor) -> Any:
        return compiled(*tensors, *constants)

    return run
