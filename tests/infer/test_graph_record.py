"""The eager-run recorder behind every captured graph (pyro_vae.infer.graph_record)."""

from __future__ import annotations

import operator
import subprocess
import sys

import pytest
import torch
from torch import fx

from pyro_vae.infer.graph_record import RecordRefused, drop_values, record_graph
from pyro_vae.infer.graph_replay import replay_function


def _ops(module: fx.GraphModule) -> list:
    return [n.target for n in module.graph.nodes if n.op == "call_function"]


def test_the_recorded_graph_replays_the_run_bitwise_on_new_inputs():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(layer(x))
        h.mul_(2.0)  # in place
        values, index = h.max(dim=-1)  # two results
        return values.sum() + torch.tensor(0.5), index

    graph = record_graph(run, [torch.randn(4, 5)])
    assert operator.getitem in _ops(graph)
    assert torch.ops.aten.mul_.Tensor in _ops(graph)
    replay = replay_function(graph)
    x = torch.randn(4, 5)
    got, expected = replay.run(x), run(x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_constants_are_the_tensors_themselves_and_draws_are_operations():
    layer = torch.nn.Linear(3, 2)

    def run(x: torch.Tensor) -> torch.Tensor:
        return layer(x + torch.randn_like(x))

    graph = record_graph(run, [torch.zeros(2, 3)])
    constants = [getattr(graph, str(n.target)) for n in graph.graph.nodes if n.op == "get_attr"]
    assert any(c is layer.weight for c in constants) and any(c is layer.bias for c in constants)
    replay = replay_function(graph)
    x = torch.randn(2, 3)
    torch.manual_seed(3)
    expected = run(x)
    torch.manual_seed(3)
    assert torch.equal(replay.run(x), expected)


def test_the_graph_keeps_gradients_flowing_to_the_parameters():
    layer = torch.nn.Linear(3, 1)
    graph = record_graph(lambda x: layer(x).square().sum(), [torch.randn(4, 3)])
    x = torch.randn(4, 3)
    replay_function(graph).run(x).backward()
    recorded = layer.weight.grad.clone()
    layer.weight.grad = None
    layer(x).square().sum().backward()
    assert torch.equal(recorded, layer.weight.grad)


@pytest.mark.parametrize(
    "read",
    [
        lambda x: x * float(x.sum()),  # .item()
        lambda x: x if bool(x.sum() > 0) else -x,  # bool(): control flow on values
        lambda x: x * 2 if torch.equal(x, x) else x,
    ],
)
def test_reading_a_computed_value_is_refused(read):
    with pytest.raises(RecordRefused, match="reads a tensor's value"):
        record_graph(read, [torch.ones(3)])


def test_reading_a_constant_value_is_allowed():
    scale = torch.tensor(3.0)
    graph = record_graph(lambda x: x * float(scale), [torch.ones(2)])
    assert torch.equal(replay_function(graph).run(torch.full((2,), 2.0)), torch.full((2,), 6.0))


def test_data_is_an_operation_and_a_tensor_sharing_memory_outside_them_is_refused():
    graph = record_graph(lambda x: (x * 2).data + 1, [torch.ones(3)])  # .data: aten.detach
    assert torch.equal(replay_function(graph).run(torch.full((3,), 2.0)), torch.full((3,), 5.0))

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy((x * 2).numpy()) + 1  # memory of an intermediate, no operation

    with pytest.raises(RecordRefused, match="shares memory"):
        record_graph(run, [torch.ones(3)])


def test_a_result_that_is_not_tensors_is_refused():
    with pytest.raises(RecordRefused, match="result holds a"):
        record_graph(lambda x: (x * 2, "label"), [torch.ones(3)])


def test_drop_values_frees_the_run_s_tensors():
    graph = record_graph(lambda x: (x * 2).sum(), [torch.ones(3)])
    assert all(isinstance(n.meta.get("val"), torch.Tensor) for n in graph.graph.nodes if n.op != "output")
    drop_values(graph)
    assert not any("val" in n.meta for n in graph.graph.nodes)


def test_recording_imports_neither_dynamo_nor_sympy():
    code = (
        "import sys, torch\n"
        "from pyro_vae.infer.graph_record import record_graph\n"
        "record_graph(lambda x: torch.tensor(1.0) + x.exp().sum(), [torch.ones(3)])\n"
        "assert 'torch._dynamo' not in sys.modules and 'sympy' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
