"""simplify_graph: fewer operations, bitwise the same values and gradients."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae.infer.graph_simplify import simplify_graph


def _targets(graph):
    return [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]


def _values_and_grads(fn, *inputs):
    """``fn``'s output and the gradients of its sum with respect to ``inputs``."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out = out[0] if isinstance(out, (tuple, list)) else out
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    return [out.detach(), *grads]


def _assert_bitwise(a, b):
    """The same bits (signed zeros and NaNs compared as bits)."""
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert (u is None and v is None) or torch.equal(u.view(torch.int32), v.view(torch.int32))


def test_simplify_graph_drops_unused_work_and_keeps_draws_and_mutations():
    counter = torch.zeros(())

    def f(x):
        torch.randn(3)  # unused, but it moves the random state on: kept
        x.clone()  # unused: dropped
        counter.add_(1)  # a mutation: kept
        return x.expand(x.shape) * torch.rand(x.shape)  # the expand to its own shape: dropped

    x = torch.randn(4, 2)
    before = _targets(make_fx(f)(x))
    simplified = simplify_graph(make_fx(f)(x)).module
    after = _targets(simplified)
    assert "aten.clone.default" in before and "aten.clone.default" not in after
    assert "aten.expand.default" in before and "aten.expand.default" not in after
    assert "aten.randn.default" in after and "aten.add_.Tensor" in after
    torch.manual_seed(3)
    expected = f(x)
    torch.manual_seed(3)
    n = float(counter)
    assert torch.equal(simplified(x), expected) and float(counter) == n + 1


def test_arithmetic_by_identities_is_dropped_with_bitwise_values_and_gradients():
    """x * 1, x / 1, x - (+0), x ** 1 by factories, numbers and uniform constants (a standard-normal
    prior's buffers, through their expand), and views to a tensor's own shape, go; the values
    and gradients stay bitwise, signed zeros, infinities and NaN included."""
    loc, scale = torch.zeros(3), torch.ones(3)

    def f(x, w):
        a = (x * w - loc.expand(x.shape)) / scale.expand(x.shape)  # a prior's (z - 0) / 1
        b = a * torch.ones_like(a) + torch.full_like(a, 2.0)  # the 2.0 is kept
        c = (b / 1).view(b.shape) ** 1 - torch.zeros(3)
        return (c * x.new_ones(()) * 1.0).sum(-1)

    x = torch.tensor([[0.5, -0.0, float("inf")], [float("nan"), 2.0, -3.0]])
    w = torch.tensor([1.5, 2.0, -1.0])
    traced = make_fx(f)(x, w)
    simplified = simplify_graph(make_fx(f)(x, w))
    ops = _targets(simplified.module)
    assert ops.count("aten.mul.Tensor") == 1  # x * w only
    assert "aten.div.Tensor" not in ops and "aten.pow.Tensor_Scalar" not in ops
    assert "aten.sub.Tensor" not in ops and "aten.view.default" not in ops
    assert "aten.add.Tensor" in ops  # + 2.0
    assert simplified.folds >= 7
    assert {id(t) for t, _ in simplified.constants} == {id(loc), id(scale)}
    _assert_bitwise(_values_and_grads(traced, x, w), _values_and_grads(simplified.module, x, w))
    _assert_bitwise(_values_and_grads(f, x, w), _values_and_grads(simplified.module, x, w))


@pytest.mark.parametrize(
    "case",
    [
        "add_zero",  # -0 + 0 = +0: not an identity
        "minus_zero",  # x - (-0) turns -0 into +0
        "not_uniform",
        "needs_grad",
        "mutated_constant",
        "mutated_result",
        "promotes",
        "broadcasts",
        "complex",  # complex multiplication by 1 turns (inf, -0) parts into NaN, +0
        "strided",  # x * 1 of a strided x is dense: another layout, other reductions
        "foreach_write",  # written through a list argument
        "set_write",  # written through a tensor that set_ made share its storage
        "aliased_inputs",  # inputs may be the same tensor
        "inference",  # no version counter to keep
    ],
)
def test_what_is_not_an_identity_stays(case):
    c = {
        "add_zero": torch.zeros(2),
        "minus_zero": torch.full((2,), -0.0),
        "not_uniform": torch.tensor([1.0, 2.0]),
        "needs_grad": torch.ones(2, requires_grad=True),
        "mutated_constant": torch.ones(2),
        "mutated_result": torch.ones(2),
        "promotes": torch.ones(2, dtype=torch.float64),
        "broadcasts": torch.ones(3, 2),
        "complex": torch.ones(2),
        "strided": torch.ones(2),
        "foreach_write": torch.ones(2),
        "set_write": torch.ones(2),
        "aliased_inputs": torch.ones(2),
        "inference": None,
    }[case]
    if case == "inference":
        with torch.inference_mode():
            c = torch.ones(2)

    def f(x):
        if case == "add_zero":
            return x + c
        if case == "minus_zero":
            return x - c
        if case == "mutated_constant":
            y = x * c
            c.add_(0.0)
            return y
        if case == "mutated_result":
            y = x / c
            y.add_(1.0)  # would change x if y were x
            return y + x
        if case == "complex":
            return torch.view_as_complex(torch.stack([x, x], -1)) * c
        if case == "strided":
            return torch.cat([x, x])[::2] * c
        if case == "foreach_write":
            torch._foreach_mul_([c], 2.0)
            return x * c
        if case == "set_write":
            other = torch.empty(0)
            other.set_(c)
            other.add_(1.0)
            return x * c
        return x * c

    x = torch.tensor([-0.0, 3.0])
    if case == "aliased_inputs":

        def g(p, q):
            y = p * 1
            q.add_(1.0)  # p is q when called as g(a, a)
            return y

        simplified = simplify_graph(make_fx(g)(x.clone(), x.clone()))
        assert simplified.folds == 0
        return
    simplified = simplify_graph(make_fx(f)(x))
    assert simplified.folds == 0
    assert simplified.constants == ()


def test_a_graph_is_stale_once_a_constant_it_relied_on_changes_in_place():
    scale = torch.ones(2)
    simplified = simplify_graph(make_fx(lambda x: x / scale)(torch.randn(2)))
    assert simplified.folds == 1 and simplified.current()
    with torch.no_grad():
        scale.fill_(2.0)
    assert not simplified.current()


def test_batch_norm_running_statistics_are_not_taken_for_constants():
    """native_batch_norm writes its running statistics without saying so in its schema."""
    bn = torch.nn.BatchNorm1d(2)

    def f(x):
        return bn(x) / bn.running_var  # running_var is ones before the first update

    x = torch.randn(5, 2)
    simplified = simplify_graph(make_fx(f)(x))
    assert "aten.div.Tensor" in _targets(simplified.module)


def test_a_graph_is_stale_once_a_constant_it_relied_on_needs_a_gradient():
    scale = torch.ones(2)
    simplified = simplify_graph(make_fx(lambda x: x / scale)(torch.randn(2)))
    assert simplified.current()
    scale.requires_grad_()
    assert not simplified.current()


def test_unused_batch_norm_still_updates_its_running_statistics():
    """native_batch_norm's schema does not say that it writes the running statistics: its
    node is kept even when nothing uses its output."""
    bn = torch.nn.BatchNorm1d(2)
    x = torch.randn(6, 2)

    def f(x):
        bn(x)
        return x * 2

    for fold in (True, False):
        simplified = simplify_graph(make_fx(f)(x), fold=fold).module
        before = bn.running_mean.clone()
        simplified(x)
        assert not torch.equal(bn.running_mean, before)


def test_no_folds_while_the_cpu_flushes_denormals():
    """With denormals flushed to zero, x * 1 is not x (1e-40 * 1 is 0)."""
    torch.set_flush_denormal(True)
    try:
        flushing = bool((torch.tensor([1e-40]) * 1.0).item() == 0.0)
        simplified = simplify_graph(make_fx(lambda x: x * 1.0)(torch.ones(2)))
    finally:
        torch.set_flush_denormal(False)
    if not flushing:
        pytest.skip("this CPU does not flush denormals")
    assert simplified.folds == 0
