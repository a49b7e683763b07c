"""replay_function: a graph's forward as one plain function, bitwise the same results."""

import torch
from torch import fx, nn
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae.infer.graph_replay import replay_function


def _bits(t):
    return t.detach().view(torch.int32) if t.dtype == torch.float32 else t.detach()


def test_replay_gives_the_graphs_draws_values_gradients_and_buffer_updates():
    """Random draws, list outputs (split), in-place updates of a module's buffers (BatchNorm),
    dtype and device arguments, and non-finite literals replay bitwise as ``module.forward``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4))
    net.train()

    def f(x):
        loc, rho = net(x).split(2, dim=-1)
        z = loc + nn.functional.softplus(rho) * torch.randn_like(loc)
        noise = torch.zeros(z.shape, dtype=torch.float64, device=z.device)
        clipped = z.clamp(max=float("inf")).masked_fill(z > 1e30, float("-inf"))
        return (clipped.sum() + noise.sum().float(), z)

    x = torch.randn(8, 4)
    module = make_fx(f)(x)
    replay = replay_function(module)
    assert "torch.ops" not in replay.source and "def replay(" in replay.source
    assert any(c is net[0].weight for c in replay.constants)
    results = []
    for run in (module.forward, replay.run):
        state = {k: v.clone() for k, v in net.state_dict().items()}
        torch.manual_seed(1)
        out, z = run(x)
        grads = torch.autograd.grad(out, list(net.parameters()))
        buffers = {k: v.clone() for k, v in net.state_dict().items()}
        net.load_state_dict(state)
        results.append((out, z, grads, buffers))
    (a_out, a_z, a_g, a_b), (b_out, b_z, b_g, b_b) = results
    assert torch.equal(_bits(a_out), _bits(b_out)) and torch.equal(_bits(a_z), _bits(b_z))
    for u, v in zip(a_g, b_g, strict=True):
        assert torch.equal(_bits(u), _bits(v))
    assert not torch.equal(a_b["1.running_mean"], torch.zeros(6))  # the update happened
    for k in a_b:
        assert torch.equal(a_b[k], b_b[k]), k


class _Twice(nn.Module):
    def forward(self, x):
        return 2 * x


def _calling_a_module(graph_module=fx.GraphModule):
    """A graph with a ``call_module`` node, which the generated replay cannot express."""
    root = nn.Module()
    root.twice = _Twice()
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_module("twice", (x,)))
    return graph_module(root, graph)


def test_graphs_with_other_nodes_replay_through_their_forward():
    module = _calling_a_module()
    replay = replay_function(module)
    assert replay.run == module.forward
    assert torch.equal(replay.run(torch.ones(2)), torch.full((2,), 2.0))


def test_dict_outputs_pytree_inputs_and_dotted_constants_replay_through_their_forward():
    """What the generated function cannot express replays through ``module.forward``."""
    dict_out = make_fx(lambda x: {"a": x * 2})(torch.ones(2))
    replay = replay_function(dict_out)
    assert torch.equal(replay.run(torch.ones(2))["a"], torch.full((2,), 2.0))
    dict_in = make_fx(lambda d: d["x"] + 1)({"x": torch.ones(2)})
    assert torch.equal(replay_function(dict_in).run({"x": torch.ones(2)}), torch.full((2,), 2.0))
    root = nn.Module()
    root.sub = nn.Module()
    root.sub.register_buffer("w", torch.full((2,), 3.0))
    graph = fx.Graph()
    x = graph.placeholder("x")
    w = graph.get_attr("sub.w")
    graph.output(graph.call_function(torch.ops.aten.mul.Tensor, (x, w)))
    dotted = replay_function(fx.GraphModule(root, graph))
    assert torch.equal(dotted.run(torch.ones(2)), torch.full((2,), 3.0))
    assert dotted.constants[0] is root.sub.w


def test_a_lazy_graph_module_replays_through_its_generated_forward_not_its_call():
    """A lazy module (as captures build them) that falls back to ``forward`` gets its source
    generated first: the replay must not go through ``__call__``, whose global module hooks
    would see the graph's borrowed constants."""
    from torch.fx._lazy_graph_module import _LazyGraphModule

    module = _calling_a_module(_LazyGraphModule)
    seen = []
    handle = nn.modules.module.register_module_forward_pre_hook(lambda m, args: seen.append(m))
    try:
        replay = replay_function(module)
        assert torch.equal(replay.run(torch.ones(2)), torch.full((2,), 2.0))
    finally:
        handle.remove()
    assert module not in seen and "def forward" in replay.source
