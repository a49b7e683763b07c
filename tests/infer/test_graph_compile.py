"""Captured graphs compiled by Inductor without TorchDynamo (pyro_vae.infer.graph_compile)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_vae.infer.captured import compiler_found
from pyro_vae.infer.graph_capture import within_rounding
from pyro_vae.infer.graph_compile import compile_graph, lift_constants
from pyro_vae.infer.graph_record import record_graph
from pyro_vae.infer.graph_simplify import attribute


def _program():
    """A layer, a BatchNorm in training mode (its running statistics updated in place) and a
    draw: parameters, buffers and random operations in one graph."""
    torch.manual_seed(0)
    layer, norm = nn.Linear(5, 3), nn.BatchNorm1d(3)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = norm(layer(x))
        noise = torch.randn_like(h)
        return (h + noise).pow(2).sum(), noise

    return layer, norm, run


def _stats(norm: nn.BatchNorm1d) -> list[torch.Tensor]:
    return [norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.clone()]


def _restore(norm: nn.BatchNorm1d, stats: list[torch.Tensor]) -> None:
    buffers = (norm.running_mean, norm.running_var, norm.num_batches_tracked)
    for buffer, value in zip(buffers, stats, strict=True):
        buffer.copy_(value)


def test_lifted_constants_are_inputs_and_the_copy_computes_the_same_bitwise():
    layer, norm, run = _program()
    x = torch.randn(8, 5)
    graph = record_graph(run, [x])
    lifted, constants = lift_constants(graph)
    left = [n for n in lifted.graph.nodes if n.op == "get_attr"]
    assert not any(isinstance(attribute(lifted, str(n.target)), torch.Tensor) for n in left)
    placeholders = [n for n in lifted.graph.nodes if n.op == "placeholder"]
    assert len(placeholders) == 1 + len(constants)
    ids = {id(c) for c in constants}
    assert {id(layer.weight), id(layer.bias), id(norm.running_mean), id(norm.running_var)} <= ids
    start = _stats(norm)
    torch.manual_seed(1)
    expected = graph(x)
    after = _stats(norm)
    _restore(norm, start)
    torch.manual_seed(1)
    got = lifted(x, *constants)
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    assert all(torch.equal(g, e) for g, e in zip(_stats(norm), after, strict=True))  # written in place


def test_a_graph_without_constants_lifts_to_itself():
    graph = record_graph(lambda x: (x * 2).sum(), [torch.randn(3)])
    lifted, constants = lift_constants(graph)
    x = torch.randn(3)
    assert torch.equal(lifted(x, *constants), graph(x))


@pytest.mark.skipif(not compiler_found(), reason="TorchInductor needs a C++ compiler")
def test_the_compiled_graph_agrees_with_the_eager_run_gradients_buffers_and_draws():
    """Values, parameter gradients and the in-place BatchNorm update to float rounding;
    the draw bitwise (PyTorch's own random operation is kept)."""
    layer, norm, run = _program()
    x = torch.randn(8, 5)
    graph = record_graph(run, [x])
    start = _stats(norm)
    compiled = compile_graph(graph, [x])
    results = []
    for fn in (run, compiled):
        _restore(norm, start)
        layer.zero_grad(set_to_none=True)
        torch.manual_seed(2)
        value, noise = fn(x)
        value.backward()
        results.append((value.detach(), noise, layer.weight.grad, layer.bias.grad, *_stats(norm)))
    (value, noise, *rest), (c_value, c_noise, *c_rest) = results
    assert torch.equal(noise, c_noise)
    assert within_rounding(c_value, value)
    for got, expected in zip(c_rest, rest, strict=True):
        assert within_rounding(got.double(), expected.double()), (got, expected)


def test_where_the_cpp_wrapper_fails_the_python_wrapper_is_tried(monkeypatch):
    """A stand-in for Inductor that cannot build the C++ wrapper and "compiles" to the graph
    itself otherwise: the result computes the graph's values, constants passed at each call."""
    import torch._inductor.compile_fx as inductor
    from torch._inductor import config

    tried = []

    def compile_fx(module, example):
        tried.append(config.cpp_wrapper)
        if config.cpp_wrapper:
            raise RuntimeError("no C++ wrapper for this graph")
        return module

    monkeypatch.setattr(inductor, "compile_fx", compile_fx)
    _, norm, run = _program()
    norm.eval()  # no buffer updates: the two runs below start alike
    x = torch.randn(8, 5)
    graph = record_graph(run, [x])
    compiled = compile_graph(graph, [x])
    assert tried == [True, False]
    torch.manual_seed(3)
    got = compiled(x)
    torch.manual_seed(3)
    expected = run(x)
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
