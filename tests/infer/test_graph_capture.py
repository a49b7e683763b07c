import math

import pytest
import torch

from pyro_vae.infer.graph_capture import agree, within_rounding


def _sum_in_another_order(terms: torch.Tensor) -> torch.Tensor:
    """Row sums of ``terms`` accumulated from the last column to the first: what a compiler
    that reorders a reduction computes."""
    out = torch.zeros(terms.shape[0], dtype=terms.dtype)
    for j in reversed(range(terms.shape[1])):
        out = out + terms[:, j]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reordered_sums_of_large_cancelling_terms_are_within_rounding(dtype):
    """A gradient scaled by num_data / batch_size: large terms that nearly cancel in some
    entries. Summed in another order, those entries are off by far more than their own size
    times the precision, but within the precision of the tensor's scale."""
    g = torch.Generator().manual_seed(0)
    terms = torch.randn(64, 128, generator=g, dtype=dtype) * 468.75
    terms[:8, -1] = -terms[:8, :-1].sum(1)  # eight entries cancel to (almost) zero
    expected, got = terms.sum(1), _sum_in_another_order(terms)
    assert not torch.equal(got, expected)
    if dtype == torch.float32:  # an entrywise check fails it
        assert not torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert within_rounding(got, expected)
    assert agree(got, expected, compiled=True)
    assert not agree(got, expected, compiled=False)


def test_other_arithmetic_is_not_within_rounding():
    expected = torch.linspace(-1e4, 1e4, 101)
    assert not within_rounding(expected * (1 + 1e-3), expected)
    shifted = expected.clone()
    shifted[50] += 10.0  # one entry off by 1e-3 of the scale
    assert not within_rounding(shifted, expected)
    assert within_rounding(expected + 1e-1, expected)  # 1e-5 of the scale


def test_nans_infinities_shapes_and_dtypes_must_match():
    e = torch.tensor([1.0, math.nan, math.inf, -math.inf])
    assert within_rounding(e.clone(), e)
    assert not within_rounding(torch.tensor([1.0, 0.0, math.inf, -math.inf]), e)
    assert not within_rounding(torch.tensor([1.0, math.nan, -math.inf, -math.inf]), e)
    assert not within_rounding(torch.tensor([1.0, math.nan, math.inf, 1e30]), e)
    assert within_rounding(torch.full((3,), math.nan), torch.full((3,), math.nan))
    assert not within_rounding(e[:3], e)
    assert not within_rounding(e.double(), e)
    assert within_rounding(torch.tensor([1, 2]), torch.tensor([1, 2]))
    assert not within_rounding(torch.tensor([1, 2]), torch.tensor([1, 3]))


def test_half_precision_gets_its_own_rounding():
    expected = torch.linspace(-100, 100, 11, dtype=torch.bfloat16)
    rounded = (expected.float() * (1 + 2e-3)).to(torch.bfloat16)  # about a bfloat16 ulp
    assert within_rounding(rounded, expected)
    assert not within_rounding((expected.float() * 1.2).to(torch.bfloat16), expected)


def test_a_cache_state_carries_run_counts_dropped_structures_and_graph_slots():
    from pyro_vae.infer.graph_capture import GraphCache

    captures = []

    def capture(name):
        def made():
            captures.append(name)
            return f"refused {name}" if name == "bad" else _StubGraph()

        return made

    cache = GraphCache(capture_after=2, max_graphs=2)
    for key in ("a", "a", "a", "bad", "bad", "bad", "c"):
        cache.get((key,), capture(key), lambda key=key: key)
    assert captures == ["a", "bad"]
    state = cache.state()
    assert state == {"a": 3, "bad": -1, "c": 1}
    resumed = GraphCache(capture_after=2, max_graphs=2)
    resumed.load_state(state)
    captures.clear()
    assert resumed.get(("new",), capture("new"), lambda: "new") is None  # eager, counted
    assert resumed.get(("bad",), capture("bad"), lambda: "bad") is None  # dropped: no capture
    assert isinstance(resumed.get(("a",), capture("a"), lambda: "a"), _StubGraph)  # at once
    assert resumed.get(("c",), capture("c"), lambda: "c") is None and resumed.seen[("c",)] == 2
    for _ in range(2):
        resumed.get(("new",), capture("new"), lambda: "new")
    assert captures == ["a"]  # both slots held (a, and bad's refusal): "new" stays eager
    assert resumed.state() == {"new": 3, "bad": -1, "a": 4, "c": 2}


class _StubGraph:
    def current(self):
        return True
