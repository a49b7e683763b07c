"""Fewer operations in a captured ATen graph, with bitwise the same values and gradients."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

aten = torch.ops.aten

# Operations whose result holds the values of their first argument (views, copies, casts).
_SAME_VALUES = {
    aten.expand.default,
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.alias.default,
    aten.clone.default,
    aten.lift_fresh_copy.default,
    aten._to_copy.default,
    aten.t.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.permute.default,
    aten.detach.default,
}
# Views that keep a tensor's shape: dropped when their result has their input's shape.
_RESHAPES = {
    aten.expand.default,
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
}
_FILLED = {  # factory -> index of its fill value (None: the value is in the name)
    aten.full.default: 1,
    aten.new_full.default: 2,
    aten.full_like.default: 1,
    aten.scalar_tensor.default: 0,
}
# Arguments some kernels write without saying so in their schemas (``native_batch_norm``).
_SECRETLY_WRITTEN = {"running_mean", "running_var"}
_ZEROS = {aten.zeros.default, aten.new_zeros.default, aten.zeros_like.default}
_ONES = {aten.ones.default, aten.new_ones.default, aten.ones_like.default}


@dataclass(frozen=True)
class SimplifiedGraph:
    """A simplified graph and the constant tensors whose *values* it relies on (with their
    version counters at simplification): a graph stays valid while none of them has been
    changed in place."""

    module: fx.GraphModule
    constants: tuple[tuple[torch.Tensor, int], ...] = ()
    folds: int = 0

    def current(self) -> bool:
        """Whether every constant the simplification read still has its value."""
        return all(t._version == version for t, version in self.constants)


def simplify_graph(graph: fx.GraphModule, *, fold: bool = True) -> SimplifiedGraph:
    """``graph`` (changed in place) with fewer operations and the same values:

    - views to the shape a tensor already has (``expand``, ``view``, ``reshape``) are dropped;
    - arithmetic by an identity is dropped: :math:`x \\cdot 1`, :math:`x / 1`,
      :math:`x - (+0)` and :math:`x^1` are exactly :math:`x` in IEEE arithmetic (signed zeros,
      infinities and NaNs included; :math:`x + 0` is not: :math:`-0 + 0 = +0`), and so are
      their gradients (:math:`g \\cdot 1`, :math:`g / 1`), where the identity is a filled
      factory (``ones``, ``zeros``, ``full``), a Python number, or a constant tensor of the
      graph that holds one value everywhere (a standard-normal prior's ``loc`` and ``scale``
      buffers) and is changed nowhere in the graph; the result must have the shape and dtype
      of :math:`x`, and neither may be changed in place in the graph (then the two would
      differ); with ``fold=False``, only the next step;
    - operations whose results nothing uses are dropped (the copies and ``arange`` s the
      effect handlers and distributions make and drop).

    The remaining operations run in the same order. Gradients are the same values, but where
    a tensor's gradient gathers three or more contributions, dropping a node between them
    can change the order autograd adds them in (float addition is not associative): a
    caller that needs bitwise equal gradients checks them (:class:`CapturedLoss` does, and
    falls back to ``fold=False``). Operations that mutate a tensor or draw
    random numbers are kept (:meth:`torch.fx.Node.is_impure`). Constant tensors whose values
    a fold relied on are returned with their version counters (:class:`SimplifiedGraph`):
    the graph is stale once one of them is changed in place."""
    relied: dict[int, tuple[torch.Tensor, int]] = {}
    folds = 0
    if fold:
        mutated = _mutated_aliases(graph)
        for node in list(graph.graph.nodes):
            if node.op != "call_function":
                continue
            source = _identity_of(node, graph, mutated, relied)
            if source is not None:
                node.replace_all_uses_with(source)
                graph.graph.erase_node(node)
                folds += 1
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return SimplifiedGraph(graph, tuple(relied.values()), folds)


def _identity_of(
    node: fx.Node, graph: fx.GraphModule, mutated: set[fx.Node], relied: dict[int, tuple[torch.Tensor, int]]
) -> fx.Node | None:
    """The node ``node`` equals bitwise (with the same gradient), or ``None``."""
    target, args = node.target, node.args
    if target in _RESHAPES:
        source = args[0]
        return source if node not in mutated and _same_layout(source, node, dtype=False) else None
    if node.kwargs.get("alpha", 1) != 1:
        return None
    if target in (aten.mul.Tensor, aten.div.Tensor, aten.sub.Tensor, aten.pow.Tensor_Scalar):
        identity = 0.0 if target is aten.sub.Tensor else 1.0
        candidates = [(args[0], args[1])]
        if target is aten.mul.Tensor:
            candidates.append((args[1], args[0]))
        for x, other in candidates:
            if not isinstance(x, fx.Node) or x in mutated or node in mutated:
                continue
            if not _same_layout(x, node, dtype=True):
                continue
            if _is_uniform(other, identity, graph, mutated, relied):
                return x
    return None


def _same_layout(a: object, b: fx.Node, *, dtype: bool) -> bool:
    before, after = getattr(a, "meta", {}).get("val"), b.meta.get("val")
    return (
        isinstance(before, torch.Tensor)
        and isinstance(after, torch.Tensor)
        and before.shape == after.shape
        and before.device == after.device
        and (not dtype or before.dtype == after.dtype)
    )


def _is_uniform(
    value: object,
    expected: float,
    graph: fx.GraphModule,
    mutated: set[fx.Node],
    relied: dict[int, tuple[torch.Tensor, int]],
) -> bool:
    """Whether ``value`` (a Python number or a node) is ``expected`` everywhere, a zero of
    its sign: a Python number, a filled factory, or a constant tensor changed nowhere in the
    graph (recorded in ``relied``), seen through views and copies."""
    if isinstance(value, (bool, int, float)):
        return _equal(float(value), expected)
    if not isinstance(value, fx.Node):
        return False
    while value.op == "call_function" and value.target in _SAME_VALUES:
        if value in mutated:
            return False
        value = value.args[0]
    if value in mutated:
        return False
    if value.op == "call_function":
        if value.target in _ZEROS:
            return _equal(0.0, expected)
        if value.target in _ONES:
            return _equal(1.0, expected)
        index = _FILLED.get(value.target)
        fill = value.args[index] if index is not None and len(value.args) > index else None
        return isinstance(fill, (bool, int, float)) and _equal(float(fill), expected)
    if value.op != "get_attr":
        return False
    tensor = getattr(graph, value.target, None)
    if not isinstance(tensor, torch.Tensor) or tensor.requires_grad or tensor.numel() == 0:
        return False
    if tensor.is_complex() or not (tensor == expected).all():
        return False
    if expected == 0.0 and bool(torch.signbit(tensor).any()):
        return False
    relied[id(tensor)] = (tensor, tensor._version)
    return True


def _equal(value: float, expected: float) -> bool:
    return value == expected and (expected != 0.0 or math.copysign(1.0, value) > 0)


def _mutated_aliases(graph: fx.GraphModule) -> set[fx.Node]:
    """The nodes whose tensors some operation of ``graph`` changes in place, with every node
    that may share memory with them: views of one another (through the operations' schemas)
    and constants on the same storage."""
    parent: dict[fx.Node, fx.Node] = {}

    def root(n: fx.Node) -> fx.Node:
        while parent.get(n, n) is not n:
            n = parent[n]
        return n

    written: list[fx.Node] = []
    storages: dict[int, fx.Node] = {}
    for node in graph.graph.nodes:
        if node.op == "get_attr":
            tensor = getattr(graph, str(node.target), None)
            if isinstance(tensor, torch.Tensor):
                first = storages.setdefault(tensor.untyped_storage().data_ptr(), node)
                parent[root(node)] = root(first)
            continue
        if node.op != "call_function":
            continue
        schema = getattr(node.target, "_schema", None)
        if schema is None:  # operator.getitem of a list of views
            source = node.args[0] if node.args else None
            if isinstance(source, fx.Node):
                parent[root(node)] = root(source)
            continue
        for i, argument in enumerate(schema.arguments):
            value = node.args[i] if i < len(node.args) else node.kwargs.get(argument.name)
            if not isinstance(value, fx.Node):
                continue
            if argument.alias_info is not None:
                parent[root(node)] = root(value)  # the result may alias this argument
            if (argument.alias_info is not None and argument.alias_info.is_write) or (
                argument.name in _SECRETLY_WRITTEN
            ):
                written.append(value)
    dirty = {root(n) for n in written}
    return {n for n in graph.graph.nodes if root(n) in dirty}
