"""BufferSnapshot: modules' buffers put back as they were, unchanged ones left alone; evaluation_mode:
every module that runs in eval mode, nested blocks held by the outermost, per thread."""

import threading

import pytest
import torch
from torch import nn

from pyro_vae.infer.modes import BufferSnapshot, evaluating, evaluation_mode


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


def test_nested_evaluation_is_held_by_the_outermost_block():
    """Modules switched inside a nested block stay in eval mode until the outermost block ends,
    then all of them are back in train mode, even after an error."""
    a, b = nn.Linear(2, 2), nn.BatchNorm1d(2)
    x = torch.randn(4, 2)
    assert not evaluating()
    try:
        with evaluation_mode():
            a(x)
            assert evaluating() and not a.training
            with evaluation_mode():
                b(x)
                assert not b.training
            assert evaluating()
            assert not a.training and not b.training  # the inner block restored nothing
            raise KeyError("out")
    except KeyError:
        pass
    assert not evaluating()
    assert a.training and b.training
    assert torch.equal(b.running_mean, torch.zeros(2))  # no running statistic changed


def test_evaluation_is_per_thread():
    seen = []
    with evaluation_mode():
        worker = threading.Thread(target=lambda: seen.append(evaluating()))
        worker.start()
        worker.join()
    assert seen == [False]


def test_blocks_closing_out_of_order_keep_the_mode_until_the_last():
    """A generator suspended inside its block while the caller's block closes: the modules it
    runs afterwards are still in eval mode, and no running statistic changes."""
    bn = nn.BatchNorm1d(2)
    x = torch.randn(8, 2)

    def chunks():
        with evaluation_mode():
            for _ in range(2):
                yield bn(x)

    g = chunks()
    with evaluation_mode():
        next(g)
    next(g)  # the caller's block is closed, the generator's is still open
    assert evaluating() and not bn.training
    assert torch.equal(bn.running_mean, torch.zeros(2))
    with pytest.raises(StopIteration):
        next(g)
    assert not evaluating() and bn.training
