"""site_log_prob: bitwise Normal.log_prob on expanded parameters, in value and gradient."""

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.infer.log_prob import broadcast_shape, compact, site_log_prob


def test_compact_keeps_values_under_broadcasting():
    base = torch.randn(3, 1, 4)
    expanded = base.expand(5, 3, 2, 4)
    small = compact(expanded)
    assert small.shape == (1, 3, 1, 4)
    assert torch.equal(small.expand(expanded.shape), expanded)
    full = torch.randn(2, 3)
    assert compact(full) is full


def test_expanded_normal_log_prob_is_bitwise_and_gradients_match():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(6, 4, generator=g, dtype=torch.float64).requires_grad_()
    scale = (torch.rand(6, 4, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    for fn in (
        dist.Normal(loc, scale).to_event(1).expand((7, 6)),  # a particle plate of 7
        dist.Normal(loc, scale).expand((7, 6, 4)),
        dist.Normal(torch.zeros(4, dtype=torch.float64), 1.0).to_event(1).expand((7, 6)),  # a prior
        dist.Normal(loc, scale).to_event(1),  # nothing expanded
    ):
        value = fn.sample() + 0.0
        ours, ref = site_log_prob(fn, value), fn.log_prob(value)
        assert ours.shape == ref.shape
        assert torch.equal(ours, ref)
        if loc.grad is not None:
            loc.grad, scale.grad = None, None
        if ref.requires_grad:
            g_ref = torch.autograd.grad(ref.sum(), (loc, scale))
            g_ours = torch.autograd.grad(site_log_prob(fn, value).sum(), (loc, scale))
            for a, b in zip(g_ours, g_ref, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_other_distributions_are_left_alone():
    fn = dist.Bernoulli(logits=torch.zeros(3, 2)).to_event(1)
    value = torch.ones(3, 2)
    assert torch.equal(site_log_prob(fn, value), fn.log_prob(value))


def test_broadcast_shape_is_torchs():
    for a, b in [((3, 1, 4), (3, 1, 4)), ((1, 4), (5, 3, 4)), ((), (2,)), ((5, 1), (1, 6))]:
        assert broadcast_shape(torch.Size(a), torch.Size(b)) == torch.broadcast_shapes(a, b)
    with pytest.raises(RuntimeError):
        broadcast_shape(torch.Size((3,)), torch.Size((4,)))
