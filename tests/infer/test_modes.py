"""BufferSnapshot: modules' buffers put back as they were, unchanged ones left alone."""

import torch
from torch import nn

from pyro_vae.infer.modes import BufferSnapshot


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(3))

    def forward(self, x):
        return x / self.scale


def test_a_snapshot_restores_changed_buffers_and_leaves_unchanged_ones_alone():
    """Running statistics a run changed are put back; a buffer that still holds its values
    keeps its version counter (a captured graph that relied on its values stays valid)."""
    bn, scaled = nn.BatchNorm1d(3), _Scaled()
    mean, count, version = bn.running_mean.clone(), bn.num_batches_tracked.clone(), scaled.scale._version
    with BufferSnapshot() as snapshot:
        scaled(bn(torch.randn(8, 3)))
        assert not torch.equal(bn.running_mean, mean)
    assert snapshot.modules == [bn, scaled]
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.num_batches_tracked, count)
    assert scaled.scale._version == version
    with torch.no_grad():
        scaled.scale.mul_(2.0)  # changed inside a snapshot's life: put back
    held = BufferSnapshot.of([bn, scaled])
    with torch.no_grad():
        scaled.scale.mul_(3.0)
    held.restore()
    assert torch.equal(scaled.scale, torch.full((3,), 2.0))
