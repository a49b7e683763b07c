"""Rows read on demand (RowSource): reads, block shuffling, and fit on a memory map equal to fit
on the same rows in memory."""

import os

import numpy as np
import pytest
import torch

from pyro_vae.data import ArrayRows
from pyro_vae.errors import InputError
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit
from pyro_vae.train.streams import as_streams


class CountingRows(ArrayRows):
    """ArrayRows that records every contiguous read."""

    def __init__(self, *arrays, **kwargs):
        super().__init__(*arrays, **kwargs)
        self.reads: list[tuple[int, int]] = []

    def read(self, start, stop):
        self.reads.append((start, stop))
        return super().read(start, stop)


def test_take_returns_the_rows_asked_for_in_order_with_fewest_reads():
    x = np.arange(60.0).reshape(20, 3)
    y = np.arange(20) % 4
    rows = CountingRows(x, y, block_size=3)
    index = torch.tensor([5, 1, 2, 3, 19, 5, 0])
    xs, ys = rows.take(index)
    torch.testing.assert_close(xs, torch.as_tensor(x, dtype=torch.float32)[index])
    assert ys.tolist() == (y[index.numpy()]).tolist() and ys.dtype == torch.int64
    assert rows.reads == [(0, 4), (5, 6), (19, 20)]  # runs of the sorted distinct rows
    assert rows.take(torch.tensor([], dtype=torch.long))[0].shape == (0, 3)
    with pytest.raises(InputError, match="out of range"):
        rows.take(torch.tensor([20]))


def test_block_order_is_a_permutation_of_contiguous_blocks():
    rows = ArrayRows(np.zeros((23, 2)), block_size=5)
    assert rows.num_blocks == 5
    order = rows.block_order(torch.tensor([4, 0, 3, 1, 2]))
    assert order.tolist() == [
        20,
        21,
        22,
        0,
        1,
        2,
        3,
        4,
        15,
        16,
        17,
        18,
        19,
        5,
        6,
        7,
        8,
        9,
        10,
        11,
        12,
        13,
        14,
    ]


def test_array_rows_refuse_bad_arrays():
    with pytest.raises(InputError, match="2-D"):
        ArrayRows(np.zeros(5))
    with pytest.raises(InputError, match="array 1 has 4 rows but x has 5"):
        ArrayRows(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(InputError, match="numeric"):
        ArrayRows(np.array([["a"]]))


def _train(data, x_val, epochs=2):
    torch.manual_seed(0)
    vae = VAE(Bernoulli(12), latent_dim=2, hidden=(8,))
    result = fit(vae.model, vae.guide, data, validation=x_val, epochs=epochs, batch_size=16, progress=False)
    return result, [p.detach().clone() for p in vae.parameters()]


def test_fit_on_a_memory_map_equals_fit_in_memory(tmp_path):
    """With blocks of one row the epoch's permutation is the same as in memory, so training is
    bitwise the same; the in-memory path is the fast path, unchanged."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(100, 12, generator=gen) < 0.3).float()
    np.save(tmp_path / "x.npy", x.numpy())
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    memory, p_memory = _train(x, x[:20])
    rows = CountingRows(mapped, block_size=1)
    streamed, p_streamed = _train(rows, x[:20])
    assert [h["train_elbo"] for h in memory.history] == [h["train_elbo"] for h in streamed.history]
    for a, b in zip(p_memory, p_streamed, strict=True):
        assert torch.equal(a, b)
    # every row read once per epoch; besides, only the heads read once: the first minibatch (16
    # rows, registration) and the per-epoch metrics' sample (eval_max_points, here all 100)
    assert sum(stop - start for start, stop in rows.reads) == 2 * 100 + 16 + 100


def test_fit_reads_blocks_of_contiguous_rows(tmp_path):
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(96, 12, generator=gen) < 0.3).float()
    rows = CountingRows(x.numpy(), block_size=8)
    result, _ = _train(rows, x[:16], epochs=1)
    assert result.num_steps == 6
    streams = as_streams(rows, 16)
    assert streams.sizes == (96,) and streams.minibatch(0)
    # each minibatch of 16 is two blocks of 8: at most two contiguous reads per step
    steps = [r for r in rows.reads if r[1] - r[0] <= 16][-6:]
    assert all(stop - start in (8, 16) and start % 8 == 0 for start, stop in steps)


def _rss_file_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
@pytest.mark.parametrize("sliced", [False, True])
def test_reading_a_memory_map_keeps_the_resident_set_flat(tmp_path, sliced):
    """Pages read from a read-only map leave the process again (madvise), rows stay exact."""
    x = np.random.default_rng(0).random((8192, 512), dtype=np.float32)  # 16 MiB
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = ArrayRows(mapped[100:] if sliced else mapped)
    before = _rss_file_kb()
    for i, (chunk,) in enumerate(rows.chunks(1024)):
        start = 1024 * i + (100 if sliced else 0)
        assert np.array_equal(chunk.numpy(), x[start : start + len(chunk)])
    assert _rss_file_kb() - before < 4 * 1024  # of 16 MiB read
