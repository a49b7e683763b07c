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
        """Whether every constant the simplification read still has its value (by its version
        counter: a write through ``.data`` escapes it) and still needs no gradient."""
        return all(t._version == version and not t.requires_grad for t, version in self.constants)


def simplify_graph(graph: fx.GraphModule, *, fold: bool = True) -> SimplifiedGraph:
    """``graph`` (changed in place) with fewer operations and the same values:

    - views to the shape a tensor already has (``expand``, ``view``, ``reshape``) are dropped;
    - arithmetic by an identity is dropped: :math:`x \\cdot 1`, :math:`x / 1`,
      :math:`x - (+0)` and :math:`x^1` are exactly :math:`x` in real IEEE arithmetic (signed
      zeros, infinities and NaNs included; :math:`x + 0` is not: :math:`-0 + 0 = +0`; nor is
      complex multiplication), where the identity is a filled factory (``ones``, ``zeros``,
      ``full``), a Python number, or a constant tensor of the graph that holds one value
      everywhere (a standard-normal prior's ``loc`` and ``scale`` buffers) and is written
      nowhere in the graph. The result must have the shape, strides, dtype and device of
      :math:`x` (a real dtype), neither may be written in place in the graph, and the CPU
      must not flush denormals to zero (then :math:`x \\cdot 1` is not :math:`x`). The
      graph's inputs are taken to be distinct tensors (none aliasing another or a constant);
      with ``fold=False``, only the next step;
    - operations whose results nothing uses are dropped (the copies and ``arange`` s the
      effect handlers and distributions make and drop), except those that write a tensor
      (in their schemas, or BatchNorm's running statistics) or draw random numbers.

    The remaining operations run in the same order. Gradients are the same values, up to
    two things a caller that needs bitwise equal gradients must check (:class:`CapturedLoss`
    does, and falls back to ``fold=False``): where three or more contributions to a gradient
    meet, autograd may add them in another order, and a dropped multiply's backward no longer
    makes a broadcast gradient (a ``sum``'s) dense, which can change how a later kernel
    rounds. Constant tensors whose values a fold relied on are returned with their version
    counters (:class:`SimplifiedGraph`): the graph is stale once one of them is changed in
    place."""
    relied: dict[int, tuple[torch.Tensor, int]] = {}
    folds = 0
    if fold and not _flushes_denormals():
        mutated = _mutated_aliases(graph)
        for node in list(graph.graph.nodes):
            if node.op != "call_function":
                continue
            source = _identity_of(node, graph, mutated, relied)
            if source is not None:
                node.replace_all_uses_with(source)
                graph.graph.erase_node(node)
                folds += 1
    _eliminate_dead_code(graph.graph)
    graph.recompile()
    return SimplifiedGraph(graph, tuple(relied.values()), folds)


def _eliminate_dead_code(graph: fx.Graph) -> None:
    """Erase the nodes nothing uses, last first, except impure ones (:func:`_is_impure`)."""
    for node in reversed(list(graph.nodes)):
        if not node.users and node.op not in ("placeholder", "output") and not _is_impure(node):
            graph.erase_node(node)


def _is_impure(node: fx.Node) -> bool:
    """:meth:`torch.fx.Node.is_impure`, random draws (older PyTorch drops unused ones, which
    would shift every later draw), and BatchNorm's kernels, which write the running
    statistics without saying so in their schemas."""
    if node.is_impure():
        return True
    if torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ()):
        return True
    schema = getattr(node.target, "_schema", None)
    return schema is not None and any(a.name in _SECRETLY_WRITTEN for a in schema.arguments)


def _flushes_denormals() -> bool:
    """Whether this thread's CPU flushes denormal floats to zero
    (``torch.set_flush_denormal(True)``): then :math:`x \\cdot 1` is not :math:`x`."""
    return bool((torch.tensor([1e-40]) * 1.0).item() == 0.0)


def attribute(module: fx.GraphModule, target: str) -> object:
    """The attribute a ``get_attr`` node names (a dotted path into submodules), or ``None``."""
    value: object = module
    for name in target.split("."):
        value = getattr(value, name, None)
        if value is None:
            return None
    return value


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
    """Whether ``a`` and ``b`` hold tensors of one shape, strides and device (and, with
    ``dtype``, one real dtype)."""
    before, after = getattr(a, "meta", {}).get("val"), b.meta.get("val")
    return (
        isinstance(before, torch.Tensor)
        and isinstance(after, torch.Tensor)
        and before.shape == after.shape
        and before.stride() == after.stride()
        and before.device == after.device
        and (not dtype or (before.dtype == after.dtype and not before.dtype.is_complex))
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
    tensor = attribute(graph, str(value.target))
    if not isinstance(tensor, torch.Tensor) or tensor.requires_grad or tensor.numel() == 0:
        return False
    if tensor.is_inference():  # no version counter to keep
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
    """The nodes whose tensors some operation of ``graph`` writes in place, with every node
    that may share memory with them: views of one another (through the operations' schemas,
    lists of tensors included), the graph's inputs (taken to alias one another), constants
    on the same storage, and both sides of a ``set_``."""
    parent: dict[fx.Node, fx.Node] = {}

    def root(n: fx.Node) -> fx.Node:
        while parent.get(n, n) is not n:
            n = parent[n]
        return n

    def join(a: fx.Node, b: fx.Node) -> None:
        parent[root(a)] = root(b)

    written: list[fx.Node] = []
    storages: dict[int, fx.Node] = {}
    first_input: fx.Node | None = None
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            first_input = first_input or node
            join(node, first_input)
            continue
        if node.op == "get_attr":
            tensor = attribute(graph, str(node.target))
            if isinstance(tensor, torch.Tensor):
                join(node, storages.setdefault(tensor.untyped_storage().data_ptr(), node))
            continue
        if node.op != "call_function":
            continue
        schema = getattr(node.target, "_schema", None)
        if schema is None:  # operator.getitem of a list of views, or an unknown function
            for source in node.all_input_nodes:
                join(node, source)
            continue
        rebinds = schema.name in ("aten::set_", "aten::resize_", "aten::as_strided_")
        for i, argument in enumerate(schema.arguments):
            value = node.args[i] if i < len(node.args) else node.kwargs.get(argument.name)
            tensors = [value] if isinstance(value, fx.Node) else []
            if isinstance(value, (list, tuple)):
                tensors = [v for v in value if isinstance(v, fx.Node)]
            for tensor in tensors:
                if argument.alias_info is not None or rebinds:
                    join(node, tensor)  # the result may alias this argument
                if (
                    (argument.alias_info is not None and argument.alias_info.is_write)
                    or argument.name in _SECRETLY_WRITTEN
                    or rebinds
                ):
                    written.append(tensor)
    dirty = {root(n) for n in written}
    return {n for n in graph.graph.nodes if root(n) in dirty}
