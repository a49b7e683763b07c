"""site_log_prob: bitwise Normal.log_prob on expanded parameters, in value and gradient; the
evaluation paths of the Normal (bitwise) and the Bernoulli (exact to rounding)."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.bounds import elbo, iwae
from pyro_vae.infer.log_prob import bernoulli_log_prob, broadcast_shape, compact, site_log_prob
from pyro_vae.infer.modes import frozen_evaluation
from pyro_vae.likelihoods import Bernoulli


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
    fn = dist.Poisson(torch.ones(3, 2)).to_event(1)
    value = torch.ones(3, 2)
    with frozen_evaluation():
        assert torch.equal(site_log_prob(fn, value), fn.log_prob(value))


def test_broadcast_shape_is_torchs():
    cases = [((3, 1, 4), (3, 1, 4)), ((1, 4), (5, 3, 4)), ((), (2,)), ((5, 1), (1, 6)), ((2, 0), (1,))]
    for a, b in cases + [(b, a) for a, b in cases]:
        ours = broadcast_shape(torch.Size(a), torch.Size(b))
        assert isinstance(ours, torch.Size) and ours == torch.broadcast_shapes(a, b)
    for a, b in [((3,), (4,)), ((2, 3), (3, 2)), ((0,), (2,))]:
        with pytest.raises(RuntimeError):
            torch.broadcast_shapes(a, b)
        with pytest.raises(RuntimeError):
            broadcast_shape(torch.Size(a), torch.Size(b))


def _exact_bernoulli(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:math:`x l - \\log(1 + e^l)` in double precision, in the form without cancellation."""
    logits, x = logits.double(), x.double()
    return x * logits - (logits.clamp(min=0) + torch.log1p(torch.exp(-logits.abs())))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_evaluation_bernoulli_is_exact_to_rounding_like_torchs(dtype):
    """Each term within 4 eps (|l| + 1) of the double-precision value, as torch's own formula
    is; logits far past the softplus threshold included (a threshold of 20 in double
    precision breaks this bound 10^5-fold)."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.rand(400, 64, generator=g, dtype=torch.float64) * 90 - 45).to(dtype)
    x = (torch.rand(400, 64, generator=g) < 0.5).to(dtype)
    exact = _exact_bernoulli(logits, x)
    bound = 4 * torch.finfo(dtype).eps * (logits.double().abs() + 1)
    with frozen_evaluation():
        ours = bernoulli_log_prob(logits, x)
    torchs = dist.Bernoulli(logits=logits).log_prob(x)
    assert ours.dtype == dtype and ours.shape == torchs.shape
    assert ((ours.double() - exact).abs() <= bound).all()
    assert ((torchs.double() - exact).abs() <= bound).all()
    # summed over features: the terms' bounds plus the sum's own rounding
    with frozen_evaluation():
        summed = bernoulli_log_prob(logits, x, 1)
    total_bound = bound.sum(-1) + 64 * torch.finfo(dtype).eps * exact.abs().sum(-1)
    assert ((summed.double() - exact.sum(-1)).abs() <= total_bound).all()


def test_evaluation_bernoulli_with_grey_levels_and_broadcast_parameters():
    """Data in [0, 1] and logits a particle plate expanded without copying: the broadcast shape
    of torch's result, its values to rounding, for 0, 1 and 2 event dimensions."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 5, 4, generator=g, dtype=torch.float64).expand(7, 3, 5, 4)
    x = torch.rand(3, 5, 4, generator=g, dtype=torch.float64)
    for event_dims in (0, 1, 2):
        fn = dist.Bernoulli(logits=logits, validate_args=False).to_event(event_dims)
        ref = fn.log_prob(x)
        with frozen_evaluation():
            ours = site_log_prob(fn, x)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-13, atol=1e-13)
    # value broader than the logits (the in-place step cannot hold the result)
    small = torch.randn(4, generator=g, dtype=torch.float64)
    values = (torch.rand(6, 4, generator=g) < 0.5).double()
    with frozen_evaluation():
        ours = bernoulli_log_prob(small, values, 1)
    torch.testing.assert_close(ours, dist.Bernoulli(logits=small).to_event(1).log_prob(values))


def test_bernoulli_outside_evaluation_or_with_gradients_is_torchs_bitwise():
    """A training step (and its captured graph, and the eager run that checks the graph) sees
    PyTorch's formula: bitwise, in value and gradient."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 3, 8, generator=g).requires_grad_()
    x = (torch.rand(3, 8, generator=g) < 0.5).float()
    fn = dist.Bernoulli(logits=logits).to_event(1)
    ref = fn.log_prob(x)
    with torch.no_grad():
        assert torch.equal(site_log_prob(fn, x), ref)  # no gradients, but not an evaluator
    with frozen_evaluation(), torch.enable_grad():
        ours = site_log_prob(fn, x)  # an evaluator that differentiates (refinement)
    assert torch.equal(ours, ref)
    assert torch.equal(torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0])


def test_bernoulli_site_validation_still_refuses_bad_values():
    fn = dist.Bernoulli(logits=torch.zeros(3), validate_args=True)
    with frozen_evaluation(), pytest.raises(ValueError):
        site_log_prob(fn, torch.tensor([0.0, 2.0, 1.0]))


def test_evaluation_normal_in_place_is_bitwise_normal_log_prob():
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        loc = torch.randn(6, 4, generator=g, dtype=dtype)
        scale = torch.rand(6, 4, generator=g, dtype=dtype) + 0.5
        cases = [
            (dist.Normal(loc, scale).to_event(1).expand((7, 6)), None),
            (dist.Normal(torch.zeros(4, dtype=dtype), 1.0).to_event(1).expand((7, 6)), None),
            (dist.Normal(loc[:1], scale).to_event(1), None),
            (dist.Normal(loc, scale), torch.randn(4, generator=g, dtype=dtype)),  # value smaller
        ]
        for fn, value in cases:
            value = fn.sample() if value is None else value
            with frozen_evaluation():
                ours = site_log_prob(fn, value)
            ref = fn.log_prob(value)
            assert ours.shape == ref.shape
            assert torch.equal(ours, ref)


def test_evaluation_paths_with_mixed_dtypes_are_torchs():
    """A float64 observation of a float32 model (or the reverse) is promoted as torch promotes
    it: the Normal bitwise, the Bernoulli by torch's own formula."""
    g = torch.Generator().manual_seed(4)
    loc, scale = torch.randn(3, 4, generator=g), torch.rand(3, 4, generator=g) + 0.5
    logits = torch.randn(3, 4, generator=g)
    for fn, value in [
        (dist.Normal(loc, scale).to_event(1), torch.randn(3, 4, generator=g, dtype=torch.float64)),
        (dist.Normal(loc, scale.double()).to_event(1), torch.randn(3, 4, generator=g)),
        (dist.Bernoulli(logits=logits).to_event(1), torch.ones(3, 4, dtype=torch.float64)),
        (dist.Bernoulli(logits=logits.double()).to_event(1), torch.ones(3, 4)),
    ]:
        with frozen_evaluation():
            ours = site_log_prob(fn, value)
        ref = fn.log_prob(value)
        assert ours.dtype == ref.dtype
        assert torch.equal(ours, ref)


def test_evaluation_bernoulli_counts_every_event_element_of_compacted_operands():
    """A logit shared by every feature and data expanded from one column: compaction narrows
    an event dimension, and the sum must still count all of its elements."""
    logits = torch.tensor(0.3).expand(3, 4)
    x = torch.ones(3, 1).expand(3, 4)
    for fn, value in [
        (dist.Bernoulli(logits=logits).to_event(1), x),
        (dist.Bernoulli(logits=torch.tensor(0.3)).expand([3, 4]).to_event(1), x),
        (dist.Bernoulli(logits=torch.randn(3, 4), validate_args=False).to_event(1), torch.ones(3, 1)),
        (Bernoulli(4)(logits), x),  # pyro_vae's likelihood
    ]:
        with frozen_evaluation():
            ours = site_log_prob(fn, value)
        ref = fn.log_prob(value.expand(fn.batch_shape + fn.event_shape))
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref)


def test_evaluation_bounds_of_a_program_with_a_shared_logit_and_expanded_data():
    """The same program evaluated on data made by ``expand`` and on a contiguous copy: the
    exact log-likelihood :math:`D \\log\\sigma(b)`, the latent having no effect."""

    def model(x):
        b = pyro.param("b", torch.tensor(0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Bernoulli(logits=b).expand([x.shape[0], 4]).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    pyro.clear_param_store()
    exact = 4 * torch.nn.functional.logsigmoid(torch.tensor(0.5))
    expanded = torch.ones(3, 1).expand(3, 4)
    for x in (expanded, expanded.contiguous()):
        torch.testing.assert_close(iwae(model, guide, x, num_particles=5), exact.expand(3))
        torch.testing.assert_close(elbo(model, guide, x, num_particles=2), exact.expand(3))
    pyro.clear_param_store()


def test_evaluation_bernoulli_at_infinite_logits_is_torchs():
    """:math:`-\\infty` where the data has probability zero, NaN where torch gives NaN."""
    inf = float("inf")
    logits = torch.tensor([inf, -inf, inf, -inf, 0.0])
    x = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    fn = dist.Bernoulli(logits=logits, validate_args=False)
    with frozen_evaluation():
        ours = site_log_prob(fn, x)
    torch.testing.assert_close(ours, fn.log_prob(x), equal_nan=True)
