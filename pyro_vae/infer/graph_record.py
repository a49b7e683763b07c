"""The ATen operations of one eager run, recorded as an FX graph, without PyTorch's compiler stack."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx
from torch.utils._python_dispatch import TorchDispatchMode


class RecordRefused(Exception):
    """A run whose operations a graph cannot stand for (the message says why)."""


def record_graph(run: Callable[..., Any], tensors: list[torch.Tensor]) -> fx.GraphModule:
    """``run(*tensors)``'s ATen operations, as it runs them eagerly, as a graph of ``tensors``:
    one ``call_function`` node per operation (``operator.getitem`` nodes for the tensors of
    an operation that returns several), in the order they ran, with the tensors that were
    neither inputs nor results of a recorded operation (parameters, buffers, tensors made
    from Python numbers) as ``get_attr`` constants of the module (the tensors themselves, not
    copies), and ``run``'s result (a tensor, or a tuple or list of them) as the output. Each
    node's ``meta["val"]`` is the value it had, for the passes that read shapes, strides and
    devices; :func:`drop_values` frees them. Until then the run's every intermediate tensor
    is held (its whole working set at once, where an eager run frees as it goes), which also
    keeps any two distinct tensors at distinct addresses for the memory check below.

    It does what :func:`torch.fx.experimental.proxy_tensor.make_fx` does for a real-valued
    trace, with a :class:`~torch.utils._python_dispatch.TorchDispatchMode` of its own: the
    run is the eager run (every operation is executed, as it would be, on real tensors), and
    recording needs neither TorchDynamo nor SymPy, which ``make_fx`` imports (1.8-2.0 s the
    first time in a process on the Intel host of docs/benchmarks.md, against 0.1 s a
    recording after).

    Refused (:class:`RecordRefused`), as ``make_fx`` refuses it: an operation that gives
    Python the values of a tensor computed from the inputs or the results (``.item()``,
    ``float()``, ``bool()``, ``torch.equal``: data-dependent control flow), whose outcome a
    graph would bake in; and, beyond ``make_fx``: a result that is not tensors, and a
    constant that shares memory with an input or with an operation's result (made from it
    outside PyTorch's operations, as ``torch.from_numpy`` of ``.numpy()`` does; ``.data`` is an
    operation, ``detach``): a graph would bake in the values of this run.
    """
    recorder = _Recorder(tensors)
    with recorder:
        result = run(*tensors)
    output = recorder.argument(result, output=True)
    if recorder.refused:
        raise RecordRefused(recorder.refused)
    recorder.graph.output(output)
    return fx.GraphModule(recorder.constants, recorder.graph)


def drop_values(module: fx.GraphModule) -> None:
    """Forget the values :func:`record_graph` kept in the nodes' ``meta`` (a graph kept for
    replays must not hold every intermediate tensor of the run it was recorded from)."""
    for node in module.graph.nodes:
        node.meta.pop("val", None)


def _address(tensor: torch.Tensor) -> int:
    """Where ``tensor``'s memory starts (0: it has none, empty or on the meta device)."""
    return tensor.untyped_storage().data_ptr() if tensor.numel() and tensor.device.type != "meta" else 0


def _reads_values(func: Any) -> bool:
    """Whether ``func`` gives Python a tensor's values (``.item()``, ``bool()``, ``equal``)."""
    return func is torch.ops.aten.is_nonzero.default or torch.Tag.data_dependent_output in func.tags


class _Recorder(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # PyTorch wraps a mode's __torch_dispatch__ in torch._dynamo.disable unless told not
        # to, and that wrapper imports TorchDynamo on its first call; a recording runs eagerly
        return False

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        super().__init__()
        self.graph = fx.Graph()
        self.constants: dict[str, Any] = {}
        self.nodes: dict[int, tuple[torch.Tensor, fx.Node]] = {}  # id -> (the tensor, its node)
        self.made: set[int] = set()  # storage addresses of inputs and results
        self.refused = ""
        for i, tensor in enumerate(tensors):
            if id(tensor) not in self.nodes:
                node = self.graph.placeholder(f"arg{i}")
                self.bind(tensor, node)

    def bind(self, tensor: torch.Tensor, node: fx.Node) -> None:
        node.meta["val"] = tensor
        self.nodes[id(tensor)] = (tensor, node)  # the tensor kept: no other takes its id
        address = _address(tensor)
        if address:
            self.made.add(address)

    def node_of(self, tensor: torch.Tensor) -> fx.Node:
        held = self.nodes.get(id(tensor))
        if held is not None and held[0] is tensor:
            return held[1]
        if _address(tensor) in self.made:
            self.refused = (
                "capture refused: the program uses a tensor that shares memory with an input or an "
                "intermediate result but was not made from it by a PyTorch operation (from_numpy "
                "of .numpy(), ...): a graph would bake in this run's values"
            )
        name = f"_tensor_constant{len(self.constants)}"
        self.constants[name] = tensor
        node = self.graph.get_attr(name)
        node.meta["val"] = tensor
        self.nodes[id(tensor)] = (tensor, node)
        return node

    def argument(self, value: Any, *, output: bool = False) -> Any:
        if isinstance(value, torch.Tensor):
            return self.node_of(value)
        if isinstance(value, (list, tuple)):
            mapped = [self.argument(v, output=output) for v in value]
            return mapped if isinstance(value, list) else tuple(mapped)
        if output:
            raise RecordRefused(f"capture refused: the program's result holds a {type(value).__name__}")
        return value

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        node_args = self.argument(args)
        node_kwargs = {k: self.argument(v) for k, v in kwargs.items()}
        if not self.refused and _reads_values(func):
            read: list[fx.Node] = []
            fx.node.map_arg((node_args, node_kwargs), read.append)
            if any(n.op != "get_attr" for n in read):
                self.refused = (
                    f"capture failed: the program reads a tensor's value ({func}: item(), float(), "
                    "bool(), ...), as data-dependent control flow does, which a graph would bake in"
                )
        result = func(*args, **kwargs)
        node = self.graph.call_function(func, node_args, node_kwargs)
        if isinstance(result, torch.Tensor):
            self.bind(result, node)
        elif isinstance(result, (list, tuple)) and any(isinstance(r, torch.Tensor) for r in result):
            node.meta["val"] = result
            for i, item in enumerate(result):
                if isinstance(item, torch.Tensor):
                    self.bind(item, self.graph.call_function(operator.getitem, (node, i)))
        else:
            node.meta["val"] = result
        return result
