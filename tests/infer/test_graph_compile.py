"""Captured graphs compiled by Inductor without TorchDynamo (pyro_vae.infer.graph_compile)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_vae.infer.captured import compiler_found
from pyro_vae.infer.graph_capture import within_rounding
from pyro_vae.infer.graph_compile import Gradients, compile_graph, joint_graph, lift_constants
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


def _eager_gradients(run, x, layer, norm, start, seed, scale=-1.0):
    """The program's outputs, ``scale`` times its value's gradients and the BatchNorm
    statistics after, by autograd."""
    _restore(norm, start)
    torch.manual_seed(seed)
    value, noise = run(x)
    grads = torch.autograd.grad(
        value, list(layer.parameters()) + list(norm.parameters()), grad_outputs=torch.tensor(scale)
    )
    return value.detach(), noise, list(grads), _stats(norm)


def test_the_joint_graph_gives_the_outputs_and_gradients_bitwise_without_autograd():
    """Traced forward and backward together, then run eagerly: the eager run's value, draw,
    gradients (of -1 times the value, as a loss's surrogate is differentiated) and BatchNorm
    update, bit for bit; the replay builds no autograd graph."""
    layer, norm, run = _program()
    x = torch.randn(8, 5)
    graph = record_graph(run, [x])
    start = _stats(norm)
    joint = joint_graph(graph, [x], differentiate=0, grad_output=-1.0)
    assert joint is not None and joint.outputs == 2
    leaves = list(layer.parameters()) + list(norm.parameters())
    assert {id(t) for t in joint.leaves} == {id(t) for t in leaves}
    value, noise, grads, stats = _eager_gradients(run, x, layer, norm, start, seed=4)
    _restore(norm, start)
    torch.manual_seed(4)
    got_value, got_noise, gradients = joint.runner(joint.module.forward)(x)
    assert not got_value.requires_grad and isinstance(gradients, Gradients)
    assert torch.equal(got_value, value) and torch.equal(got_noise, noise)
    for leaf, expected in zip(leaves, grads, strict=True):
        assert torch.equal(gradients.of(leaf), expected)
    assert all(torch.equal(g, e) for g, e in zip(_stats(norm), stats, strict=True))
    assert gradients.of(torch.zeros(1)) is None


def test_there_is_no_joint_graph_without_gradients_to_take():
    layer, norm, run = _program()
    x = torch.randn(8, 5)
    graph = record_graph(run, [x])
    with torch.no_grad():
        assert joint_graph(graph, [x], differentiate=0, grad_output=1.0) is None
    wanted = x.clone().requires_grad_()
    assert joint_graph(graph, [wanted], differentiate=0, grad_output=1.0) is None  # an input's gradient
    for p in [*layer.parameters(), *norm.parameters()]:
        p.requires_grad_(False)
    assert joint_graph(graph, [x], differentiate=0, grad_output=1.0) is None
    root = torch.ones(3, requires_grad=True)
    derived = root * 2  # a constant with a history: its gradient flows on to `root`
    closes_over = record_graph(lambda x: ((x * derived).sum(),), [torch.randn(3)])
    assert joint_graph(closes_over, [torch.randn(3)], differentiate=0, grad_output=1.0) is None


def test_gradients_accumulate_as_backward_does_and_run_the_leaves_hooks():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    b.grad = torch.ones(2)
    ga, gb = torch.arange(3.0), torch.full((2,), 2.0)
    Gradients([a, b], [ga, gb]).accumulate()
    assert a.grad is ga  # taken, as autograd takes a fresh gradient
    assert torch.equal(b.grad, torch.full((2,), 3.0))  # added
    transposed = torch.zeros(3, 2).t().detach().requires_grad_()  # a leaf strided (1, 2)
    gt = torch.arange(6.0).reshape(2, 3)
    Gradients([transposed], [gt]).accumulate()
    assert transposed.grad.stride() == transposed.stride() and torch.equal(transposed.grad, gt)
    hooked = torch.zeros(2, requires_grad=True)
    seen = []
    hooked.register_hook(lambda g: g * 10)
    hooked.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.clone()))
    Gradients([hooked], [torch.ones(2)]).accumulate()
    assert torch.equal(hooked.grad, torch.full((2,), 10.0)) and len(seen) == 1


def test_under_torch_distributed_gradients_go_through_the_autograd_engine(monkeypatch):
    """DistributedDataParallel all-reduces from hooks on the gradient accumulators, which
    Python cannot list: the engine runs them."""
    from pyro_vae.infer import graph_compile

    monkeypatch.setattr(graph_compile, "_distributed", lambda: True)
    a = torch.zeros(3, requires_grad=True)
    ga = torch.arange(3.0)
    Gradients([a], [ga]).accumulate()
    assert torch.equal(a.grad, ga) and a.grad is not ga  # the engine's copy


@pytest.mark.skipif(not compiler_found(), reason="TorchInductor needs a C++ compiler")
def test_the_compiled_joint_graph_agrees_with_autograd_to_rounding():
    layer, norm, run = _program()
    x = torch.randn(8, 5)
    graph = record_graph(run, [x])
    start = _stats(norm)
    joint = joint_graph(graph, [x], differentiate=0, grad_output=-1.0)
    with torch.no_grad():
        compiled = joint.runner(compile_graph(joint.module, [x, *joint.constants]))
    value, noise, grads, stats = _eager_gradients(run, x, layer, norm, start, seed=5)
    _restore(norm, start)
    torch.manual_seed(5)
    got_value, got_noise, gradients = compiled(x)
    assert torch.equal(got_noise, noise) and within_rounding(got_value, value)
    leaves = list(layer.parameters()) + list(norm.parameters())
    for leaf, expected in zip(leaves, grads, strict=True):
        assert within_rounding(gradients.of(leaf), expected)
    for got, expected in zip(_stats(norm), stats, strict=True):
        assert within_rounding(got.double(), expected.double())


@pytest.mark.skipif(not compiler_found(), reason="TorchInductor needs a C++ compiler")
def test_a_second_compile_of_a_graph_is_served_by_inductors_caches():
    """Called directly, Inductor bypassed its on-disk caches ("No shape env") and generated
    every compile's code anew; compile_graph gives it a shape environment."""
    from torch._dynamo.utils import counters

    layer = nn.Linear(4, 3)
    graph = record_graph(lambda x: torch.tanh(layer(x)).sum(), [torch.randn(2, 4)])
    compile_graph(graph, [torch.randn(2, 4)])
    hits = counters["inductor"]["fxgraph_cache_hit"]
    bypassed = counters["inductor"]["fxgraph_cache_bypass"]
    compiled = compile_graph(graph, [torch.randn(2, 4)])
    assert counters["inductor"]["fxgraph_cache_hit"] > hits  # a forward and a backward graph
    assert counters["inductor"]["fxgraph_cache_bypass"] == bypassed
    x = torch.randn(2, 4)
    assert within_rounding(compiled(x), torch.tanh(layer(x)).sum())
