import math

import pytest
import torch

from pyro_vae.comparison.gradients import GradientMoments, summarize_gradients


def test_moments_and_summary_written_out():
    samples = torch.tensor(
        [[1.0, 0.0, 2.0], [3.0, 0.0, 2.0], [2.0, 0.0, 5.0], [2.0, 0.0, 3.0]], dtype=torch.float64
    )
    moments = GradientMoments()
    for s in samples:
        moments.update(s)
    torch.testing.assert_close(moments.mean, samples.mean(0))
    torch.testing.assert_close(moments.variance, samples.var(0))
    exact = torch.tensor([2.0, 0.0, 2.0], dtype=torch.float64)
    summary = summarize_gradients(moments, exact)
    approx = lambda v: pytest.approx(v, rel=1e-12)  # noqa: E731
    assert summary.variance == approx(samples.var(0).sum().item())
    assert summary.snr == approx(samples.mean(0).norm().item() / math.sqrt(samples.var(0).sum().item()))
    # per-coordinate |mean| / sd of the two coordinates with variance: 2 / sqrt(2/3) and 3 / sqrt(2);
    # torch's median of two values is the lower one
    assert summary.snr_median == approx(min(2 / math.sqrt(2 / 3), 3 / math.sqrt(2)))
    assert summary.bias == approx((samples.mean(0) - exact).norm().item())
    assert summary.bias_se == approx(math.sqrt(samples.var(0).sum().item() / 4))
    assert summary.relative_bias == approx(summary.bias / exact.norm().item())
