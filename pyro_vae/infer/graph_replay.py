"""A captured ATen graph as one plain Python function, for replaying it many times."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.fx._lazy_graph_module import _LazyGraphModule

from pyro_vae.infer.graph_simplify import attribute


class _Unsupported(Exception):
    """A graph the generated function cannot express (it replays through its forward)."""


@dataclass(frozen=True)
class Replay:
    """A graph's operations as a function of its inputs (``run``), the constants bound into
    it (parameters, buffers, in the graph's order) and its source, for reading."""

    run: Callable
    constants: tuple[Any, ...]
    source: str


def replay_function(module: fx.GraphModule) -> Replay:
    """``module``'s forward as one Python function of its inputs: the same operations in the
    same order, so bitwise the same results, values freed after their last use as FX frees
    them, with less Python per operation.

    ``GraphModule.forward`` reads each constant (a parameter, a buffer) through
    ``nn.Module.__getattr__`` and calls each ATen operator as ``torch.ops.aten.<op>.<overload>``,
    a chain of attribute lookups ending in the Python ``OpOverload.__call__``, which only
    forwards to the operator's C++ binding. Here the constants are leading arguments bound
    once (:func:`functools.partial`) and the bindings (``OpOverload._op``) are the function's
    globals, called directly. On ``benchmarks/train_step.py``'s VAE the replayed forward pass
    took 2.07 ms against 2.32 ms for ``GraphModule.forward`` (interleaved in one process,
    medians of 950). Graphs with nodes other than placeholders, constants, function calls and
    the output, with arguments holding nodes in containers other than lists and tuples, or
    with inputs or outputs structured by a pytree (``make_fx`` of a function taking a dict)
    replay through ``module.forward``. For
    Inductor, which traces operator overloads, use the module itself
    (:func:`~pyro_vae.infer.graph_compile.compile_graph`).
    """
    try:
        return _generate(module)
    except _Unsupported:
        _LazyGraphModule.force_recompile(module)  # a lazy module's forward would go through __call__
        return Replay(module.forward, (), module.code)


def _generate(module: fx.GraphModule) -> Replay:
    graph = module.graph
    nodes = list(graph.nodes)
    if type(graph._codegen) is not fx.graph.CodeGen:  # pytree-structured inputs or outputs
        raise _Unsupported
    if any(n.op not in ("placeholder", "get_attr", "call_function", "output") for n in nodes):
        raise _Unsupported
    last_use: dict[fx.Node, int] = {}
    for i, node in enumerate(nodes):
        for used in node.all_input_nodes:
            last_use[used] = i
    names: dict[fx.Node, str] = {}
    bound: dict[str, Any] = {}
    constants: list[Any] = []
    constant_names: list[str] = []
    inputs: list[str] = []

    def bind(value: Any) -> str:
        name = f"g{len(bound)}"
        bound[name] = value
        return name

    def render(value: Any) -> str:
        if isinstance(value, fx.Node):
            return names[value]
        if isinstance(value, (list, tuple)):
            inner = ", ".join(render(v) for v in value)
            if isinstance(value, list):
                return f"[{inner}]"
            return f"({inner},)" if len(value) == 1 else f"({inner})"
        if value is None or type(value) in (bool, int, str):
            return repr(value)
        if type(value) is float and math.isfinite(value):
            return repr(value)  # round-trips exactly
        if isinstance(value, (dict, slice, set, frozenset)):
            held: list[fx.Node] = []
            fx.node.map_arg(value, held.append)
            if held:
                raise _Unsupported
        return bind(value)  # dtypes, devices, layouts, non-finite floats, ...

    lines: list[str] = []
    for i, node in enumerate(nodes):
        if node.op == "placeholder":
            names[node] = f"a{i}"
            inputs.append(names[node])
            continue
        if node.op == "get_attr":
            names[node] = f"c{i}"
            value = attribute(module, str(node.target))
            if value is None:
                raise _Unsupported
            constants.append(value)
            constant_names.append(names[node])
            continue
        if node.op == "output":
            lines.append(f"    return {render(node.args[0])}")
            continue
        target = node.target
        call = target._op if isinstance(target, torch._ops.OpOverload) else target
        arguments = [render(a) for a in node.args] + [f"{k}={render(v)}" for k, v in node.kwargs.items()]
        names[node] = f"v{i}"
        lines.append(f"    {names[node]} = {bind(call)}({', '.join(arguments)})")
        dead = {names[n] for n in node.all_input_nodes if last_use.get(n) == i and n.op != "placeholder"}
        if not node.users:
            dead.add(names[node])
        if dead:
            lines.append(f"    del {', '.join(sorted(dead))}")
    source = f"def replay({', '.join(constant_names + inputs)}):\n" + "\n".join(lines) + "\n"
    namespace = dict(bound)
    exec(compile(source, f"<replay of {type(module).__name__}>", "exec"), namespace)
    return Replay(functools.partial(namespace["replay"], *constants), tuple(constants), source)
