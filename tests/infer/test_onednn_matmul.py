"""oneDNN's kernels for a captured graph's matrix products: the same products to float
rounding, forward and backward, and the options that choose them."""

import pyro
import pytest
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae.bounds import iwae
from pyro_vae.errors import InputError
from pyro_vae.infer import MeanFieldELBO, onednn_matmul
from pyro_vae.infer.captured import CapturedLoss
from pyro_vae.infer.captured_log_weights import CapturedLogWeights
from pyro_vae.infer.graph_capture import within_rounding
from pyro_vae.infer.onednn_matmul import (
    LINEAR_OP,
    OneDNNLinear,
    onednn_available,
    resolve_matmul,
    use_onednn_matmul,
)
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit, train_step

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_the_linear_and_its_gradients_equal_pytorchs_to_rounding(bias):
    x = torch.randn(33, 70, generator=_gen(0), requires_grad=True)
    w = torch.randn(50, 70, generator=_gen(1), requires_grad=True)
    b = torch.randn(50, generator=_gen(2), requires_grad=True) if bias else None
    g = torch.randn(33, 50, generator=_gen(3))
    leaves = [x, w] + ([b] if bias else [])
    ours = OneDNNLinear.apply(x, w, b)
    theirs = torch.nn.functional.linear(x, w, b)
    assert within_rounding(ours, theirs)
    for a, c in zip(
        torch.autograd.grad(ours, leaves, g), torch.autograd.grad(theirs, leaves, g), strict=True
    ):
        assert within_rounding(a, c)
    # and not the same computation as something else: a transposed weight is caught
    assert not within_rounding(torch.nn.functional.linear(x, w.flip(0), b), theirs)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_the_operator_and_its_registered_gradients_equal_pytorchs_to_rounding(bias):
    """``LINEAR_OP``, what a compiled graph calls: the same product and gradients as
    ``F.linear`` (its gradients are oneDNN products too), with strided (transposed) operands."""
    x = torch.randn(70, 33, generator=_gen(0)).t().requires_grad_()  # a transposed view
    w = torch.randn(50, 70, generator=_gen(1), requires_grad=True)
    b = torch.randn(50, generator=_gen(2), requires_grad=True) if bias else None
    g = torch.randn(33, 50, generator=_gen(3))
    leaves = [x, w] + ([b] if bias else [])
    ours, theirs = LINEAR_OP(x, w, b), torch.nn.functional.linear(x, w, b)
    assert within_rounding(ours, theirs)
    for a, c in zip(
        torch.autograd.grad(ours, leaves, g), torch.autograd.grad(theirs, leaves, g), strict=True
    ):
        assert a is not None and within_rounding(a, c)
    assert not within_rounding(LINEAR_OP(x, w.flip(0), b), theirs)
    # traced (what AOTAutograd and Inductor see): the fake implementation's shape, and the
    # backward's products the operator again
    joint = make_fx(lambda x, w: torch.autograd.grad(LINEAR_OP(x, w, None).sum(), (x, w)))(x, w)
    calls = [n for n in joint.graph.nodes if n.target is LINEAR_OP]
    assert len(calls) == 3 and "aten.mm" not in joint.code


@needs_onednn
def test_only_the_inputs_that_need_a_gradient_get_one():
    x = torch.randn(8, 5, generator=_gen(0))  # data: no gradient
    w = torch.randn(3, 5, generator=_gen(1), requires_grad=True)
    OneDNNLinear.apply(x, w, None).sum().backward()
    assert w.grad is not None and x.grad is None
    torch.testing.assert_close(w.grad, torch.ones(8, 3).t() @ x)


def _mlp_graph(dtype=torch.float32):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4, bias=False)).to(dtype)
    x = torch.randn(7, 6, dtype=dtype)
    return net, x, make_fx(net)(x)


@needs_onednn
def test_the_rewrite_moves_every_float32_product_and_keeps_the_values():
    net, x, graph = _mlp_graph()
    expected = net(x)
    assert use_onednn_matmul(graph) == 2  # addmm and mm
    code = graph.code
    assert "onednn_linear" in code and "addmm" not in code and "aten.mm" not in code
    assert within_rounding(graph(x), expected)
    _, _, for_inductor = _mlp_graph()
    assert use_onednn_matmul(for_inductor, compiled=True) == 2
    assert sum(n.target is LINEAR_OP for n in for_inductor.graph.nodes) == 2
    assert within_rounding(for_inductor(x), expected)


@needs_onednn
def test_the_rewrite_leaves_other_products_alone():
    _, _, graph = _mlp_graph(torch.float64)
    assert use_onednn_matmul(graph) == 0  # oneDNN's kernel is float32 here
    a, b = torch.randn(3, 4, 5), torch.randn(3, 5, 2)
    assert use_onednn_matmul(make_fx(torch.bmm)(a, b)) == 0  # batched
    c, m1, m2 = torch.randn(4, 2), torch.randn(4, 3), torch.randn(3, 2)
    scaled = make_fx(lambda c, m1, m2: torch.addmm(c, m1, m2, beta=0.5))(c, m1, m2)
    assert use_onednn_matmul(scaled) == 0  # a scale factor; and a 2-D bias
    row = torch.randn(1, 3)
    broadcast = make_fx(lambda r, m: torch.mm(r.expand(4, 3), m))(row, m2)
    assert use_onednn_matmul(broadcast) == 0  # a stride-0 operand


def test_options_are_checked_and_auto_depends_only_on_the_machine(monkeypatch):
    with pytest.raises(InputError, match="matmul='fast'"):
        resolve_matmul("fast")
    with pytest.raises(InputError, match="matmul"):
        CapturedLogWeights(matmul="blas")
    assert resolve_matmul("aten") == "aten"
    monkeypatch.setattr(onednn_matmul, "cpu_vendor", lambda: "GenuineIntel")
    assert resolve_matmul("auto") == "aten"
    monkeypatch.setattr(onednn_matmul, "cpu_vendor", lambda: "")
    assert resolve_matmul("auto") == "aten"
    monkeypatch.setattr(onednn_matmul, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(onednn_matmul, "cpu_capability", lambda: "AVX512")
    assert resolve_matmul("auto") == ("onednn" if onednn_available() else "aten")
    monkeypatch.setattr(onednn_matmul, "cpu_capability", lambda: "AVX2")
    assert resolve_matmul("auto") == "aten"  # oneDNN's GEMM was the slower on AVX2 (docs/benchmarks.md)
    monkeypatch.setattr(onednn_matmul, "onednn_available", lambda: False)
    with pytest.raises(InputError, match="no oneDNN"):
        resolve_matmul("onednn")


def _x(n=32, d=12, seed=0):
    return (torch.rand(n, d, generator=_gen(seed)) < 0.4).float()


def _train(matmul, steps=8):
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE(Bernoulli(12), latent_dim=3, hidden=(16,), name="m")
    loss = CapturedLoss(MeanFieldELBO(), capture_after=1, matmul=matmul)
    opt = torch.optim.Adam(vae.parameters(), lr=0.01)
    torch.manual_seed(1)
    with pyro.validation_enabled(False):
        x, kwargs = (_x(),), {"num_data": 6000}
        values = [train_step(loss, opt, vae.model, vae.guide, x, kwargs) for _ in range(steps)]
    return loss, values, [p.detach().clone() for p in vae.parameters()]


@needs_onednn
def test_a_training_step_on_onednn_is_captured_and_trains_as_the_eager_step_to_rounding():
    plain, plain_values, plain_params = _train("aten")
    fast, values, params = _train("onednn")
    assert fast.captured_steps == plain.captured_steps == 7, fast.fallback_reason
    (graph,) = (g for g in fast._graphs.values() if g is not None)
    assert not graph.exact and graph.kernels == "onednn"
    torch.testing.assert_close(torch.tensor(values), torch.tensor(plain_values), rtol=1e-5, atol=1e-3)
    for a, b in zip(params, plain_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@needs_onednn
def test_evaluation_chunks_on_onednn_give_the_eager_bound_to_rounding():
    torch.manual_seed(0)
    vae, x = VAE(Bernoulli(12), latent_dim=3, hidden=(16,)), _x(12)
    capture = CapturedLogWeights(matmul="onednn")
    with pyro.validation_enabled(False):
        torch.manual_seed(1)
        eager = iwae(vae.model, vae.guide, x, num_particles=16, max_rows=32)
        torch.manual_seed(1)
        fast = iwae(vae.model, vae.guide, x, num_particles=16, max_rows=32, capture=capture)
    assert capture.captured_chunks > 0, capture.fallback_reason
    graphs = [g for g in capture._cache.graphs.values() if g is not None]
    assert graphs and all(not g.exact and g.kernels == "onednn" for g in graphs)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_fit_says_which_kernels_its_replayed_steps_ran_on():
    def run(matmul):
        torch.manual_seed(0)
        vae = VAE(Bernoulli(12), latent_dim=3, hidden=(16,))
        options = {"epochs": 2, "batch_size": 8, "progress": False, "capture_after": 2}
        return fit(vae.model, vae.guide, _x(64), matmul=matmul, **options)

    assert run("onednn").matmul == "onednn"
    assert run("aten").matmul == "aten"
    assert fit.__kwdefaults__["matmul"] == "auto"  # the machine's fastest kernels by default
    assert run("auto").matmul == resolve_matmul("auto")


@needs_onednn
@pytest.mark.slow
def test_vimco_on_onednn_is_captured_though_its_leave_one_out_differences_amplify_rounding():
    """VIMCO's control variates are differences of log-weights near -500: on oneDNN's kernels
    its gradients on the Jang categorical VAE at initialization were 1.3-2.4e-4 of their scale
    from the eager ones, which a check of the gradients to the rounding of values (1e-4)
    refused. The structure is checked bitwise on PyTorch's kernels and the kernels to 1% of
    the scale: captured on oneDNN, and the same steps to rounding."""
    from pyro_vae.estimators import VIMCO
    from pyro_vae.models import CategoricalLatent, DiscreteVAE

    x = (torch.rand(100, 784, generator=_gen(0)) < 0.3).float()
    results = []
    for matmul in ("aten", "onednn"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = DiscreteVAE(Bernoulli(784), CategoricalLatent(20, 10), hidden=(512, 256), name="jang")
        loss = CapturedLoss(VIMCO(num_particles=5), capture_after=1, matmul=matmul)
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
        torch.manual_seed(1)
        with pyro.validation_enabled(False):
            kwargs = {"num_data": 60_000}
            values = [train_step(loss, opt, vae.model, vae.guide, (x,), kwargs) for _ in range(3)]
        results.append((loss, values))
    (plain, plain_values), (fast, values) = results
    assert fast.captured_steps == plain.captured_steps == 2, fast.fallback_reason
    assert [g.kernels for g in fast._graphs.values() if g is not None] == ["onednn"]
    torch.testing.assert_close(torch.tensor(values), torch.tensor(plain_values), rtol=1e-5, atol=1.0)


@needs_onednn
def test_a_graph_whose_kernels_disagree_keeps_pytorchs_and_stays_bitwise(monkeypatch):
    from pyro_vae.infer import graph_capture

    monkeypatch.setattr(graph_capture, "KERNEL_RTOL", -1.0)  # a bound no tensor meets: oneDNN refused
    _, plain_values, plain_params = _train("aten")
    fast, values, params = _train("onednn")
    assert fast.captured_steps == 7 and fast.kernels == "aten"
    (graph,) = (g for g in fast._graphs.values() if g is not None)
    assert graph.exact
    assert values == plain_values
    for a, b in zip(params, plain_params, strict=True):
        assert torch.equal(a, b)


def _calls_the_operator(compiled):
    """A stand-in for :func:`~pyro_vae.infer.graph_compile.compile_graph` that records whether
    each graph it is given calls ``LINEAR_OP`` and compiles it for real."""
    from pyro_vae.infer.graph_compile import compile_graph

    def compile_and_record(module, inputs):
        compiled.append(any(n.target is LINEAR_OP for n in module.graph.nodes))
        return compile_graph(module, inputs)

    return compile_and_record


@needs_onednn
@pytest.mark.slow
def test_a_compiled_step_on_onednn_calls_its_products_and_trains_as_the_eager_step(monkeypatch):
    """``compile=True, matmul="onednn"``: the joint graph (forward and gradients) that Inductor
    compiles calls oneDNN's products, forward and backward, and the steps' values and
    parameters are the eager ones to rounding."""
    from pyro_vae.infer import captured, graph_capture

    if not captured.compiler_found():
        pytest.skip("no C++ compiler for TorchInductor")
    seen: list[bool] = []
    monkeypatch.setattr(graph_capture, "compile_graph", _calls_the_operator(seen))
    _, plain_values, plain_params = _train("aten")
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE(Bernoulli(12), latent_dim=3, hidden=(16,), name="m")
    loss = CapturedLoss(MeanFieldELBO(), capture_after=1, matmul="onednn", compile=True)
    opt = torch.optim.Adam(vae.parameters(), lr=0.01)
    torch.manual_seed(1)
    with pyro.validation_enabled(False):
        x, kwargs = (_x(),), {"num_data": 6000}
        values = [train_step(loss, opt, vae.model, vae.guide, x, kwargs) for _ in range(8)]
    assert seen == [True], loss.compile_note
    assert loss.compiled and loss.kernels == "onednn" and loss.compile_note == ""
    (graph,) = (g for g in loss._graphs.values() if g is not None)
    assert not graph.exact
    torch.testing.assert_close(torch.tensor(values), torch.tensor(plain_values), rtol=1e-5, atol=1e-3)
    for a, b in zip(vae.parameters(), plain_params, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=1e-4, atol=1e-6)


def _three_steps_compiled_by(compiler, monkeypatch):
    """Three steps of ``CapturedLoss(matmul="onednn", compile=True)`` with ``compiler`` standing
    in for :func:`~pyro_vae.infer.graph_compile.compile_graph`, a C++ compiler taken as found."""
    from pyro_vae.infer import captured, graph_capture

    monkeypatch.setattr(captured, "check_compile", lambda compile: None)
    monkeypatch.setattr(graph_capture, "compile_graph", compiler)
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE(Bernoulli(12), latent_dim=3, hidden=(16,), name="m")
    loss = CapturedLoss(MeanFieldELBO(), capture_after=1, matmul="onednn", compile=True)
    opt = torch.optim.Adam(vae.parameters(), lr=0.01)
    with pyro.validation_enabled(False):
        for _ in range(3):
            train_step(loss, opt, vae.model, vae.guide, (_x(),), {"num_data": 6000})
    return loss


@needs_onednn
def test_a_compiled_graph_on_onednn_that_fails_is_compiled_on_pytorchs_kernels(monkeypatch):
    """Where Inductor cannot compile the graph that calls oneDNN's products, the graph on
    PyTorch's kernels is compiled instead (here a stand-in that returns it uncompiled), and
    ``compile_note`` says why."""

    def refuses_onednn(module, inputs):
        if any(n.target is LINEAR_OP for n in module.graph.nodes):
            raise RuntimeError("no kernel for pyro_vae::onednn_linear")
        return module

    loss = _three_steps_compiled_by(refuses_onednn, monkeypatch)
    assert loss.compiled and loss.kernels == "aten" and loss.captured_steps == 2
    assert "not compiled on oneDNN's kernels: RuntimeError: no kernel" in loss.compile_note


@needs_onednn
@pytest.mark.slow
def test_compiled_evaluation_chunks_on_onednn_give_the_eager_bound_to_rounding(monkeypatch):
    from pyro_vae.infer import captured, graph_capture

    if not captured.compiler_found():
        pytest.skip("no C++ compiler for TorchInductor")
    seen: list[bool] = []
    monkeypatch.setattr(graph_capture, "compile_graph", _calls_the_operator(seen))
    torch.manual_seed(0)
    vae, x = VAE(Bernoulli(12), latent_dim=3, hidden=(16,)), _x(12)
    capture = CapturedLogWeights(matmul="onednn", compile=True)
    with pyro.validation_enabled(False):
        torch.manual_seed(1)
        eager = iwae(vae.model, vae.guide, x, num_particles=16, max_rows=32)
        torch.manual_seed(1)
        fast = iwae(vae.model, vae.guide, x, num_particles=16, max_rows=32, capture=capture)
    assert capture.compiled_graphs > 0 and all(seen), capture.fallback_reason
    graphs = [g for g in capture._cache.graphs.values() if g is not None]
    assert all(g.compiled and g.kernels == "onednn" for g in graphs)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_a_graph_that_cannot_be_compiled_at_all_stays_on_onednn_uncompiled(monkeypatch):
    """``matmul="onednn", compile=True`` where Inductor fails on both graphs: the uncompiled
    graph on oneDNN's kernels is kept (not PyTorch's), and ``compile_note`` says why for both."""

    def fails(module, inputs):
        raise RuntimeError("no compiler today")

    loss = _three_steps_compiled_by(fails, monkeypatch)
    assert loss.captured_steps == 2 and not loss.compiled and loss.kernels == "onednn"
    note = loss.compile_note
    assert "not compiled on oneDNN's kernels: RuntimeError" in note and "; not compiled: RuntimeError" in note
