"""Rows read on demand: data sets larger than memory, trained on in minibatches.

A :class:`RowSource` is what :func:`~pyro_vae.train.fit` accepts in place of in-memory
tensors: it has a length and returns the tensors of the rows it is asked for. ``fit`` then
shuffles *blocks* of :attr:`RowSource.block_size` consecutive rows (a fresh permutation of the
blocks every epoch), so that each minibatch is a few contiguous reads, and holds only one
minibatch in memory at a time. Per-epoch training metrics read a bounded head of the rows
(``eval_max_points``).

- :class:`ArrayRows`: numpy arrays, e.g. ``np.load("x.npy", mmap_mode="r")``, a memory map
  whose pages the operating system reads as needed and may drop again.
- :class:`~pyro_vae.data.h5ad.H5adRows` (in :mod:`pyro_vae.data.h5ad`): the counts of an
  AnnData ``.h5ad`` file read in backed mode.
"""

from __future__ import annotations

import mmap
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError


class RowSource(ABC):
    """Rows ``0 .. len - 1`` of one or more aligned arrays (``x``, optionally labels or
    covariates), read on demand.

    Subclasses implement :meth:`__len__` and :meth:`read` (contiguous rows as numpy arrays);
    :meth:`take` reads any rows by grouping them into contiguous runs.

    :param block_size: rows that :func:`~pyro_vae.train.fit` keeps together when it shuffles
        (one contiguous read); a minibatch of :math:`B` rows is :math:`\\lceil B / b \\rceil`
        blocks.
    :param dtype: the dtype of the floating arrays returned (integer arrays, labels, keep
        theirs as int64).
    """

    def __init__(self, *, block_size: int = 32, dtype: torch.dtype = torch.float32) -> None:
        check_positive_int(block_size, "block_size")
        self.block_size = block_size
        self.dtype = dtype

    @abstractmethod
    def __len__(self) -> int:
        """The number of rows."""

    @abstractmethod
    def read(self, start: int, stop: int) -> tuple[np.ndarray, ...]:
        """Rows ``start:stop`` (contiguous) of each array."""

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        a = np.ascontiguousarray(a) if a.flags.writeable else np.array(a)  # never alias a read-only map
        if a.dtype == np.bool_:
            a = a.astype(np.float64)
        if np.issubdtype(a.dtype, np.floating):
            return torch.as_tensor(a).to(self.dtype)
        return torch.as_tensor(a.astype(np.int64, copy=False))

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        """Rows ``start:stop`` as tensors."""
        stop = min(stop, len(self))
        return tuple(self._tensor(a) for a in self.read(start, stop))

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rows ``index`` (in that order) as tensors, read as the fewest contiguous runs."""
        idx = index.detach().cpu().numpy().astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise InputError(f"row index out of range for {len(self)} rows")
        if not idx.size:
            return self.rows(0, 0)
        unique = np.unique(idx)  # sorted; a repeated row is read once
        runs = np.split(unique, np.flatnonzero(np.diff(unique) != 1) + 1)
        parts = [self.read(int(run[0]), int(run[-1]) + 1) for run in runs]
        arrays = [np.concatenate(cols) for cols in zip(*parts, strict=True)]
        at = np.searchsorted(unique, idx)
        return tuple(self._tensor(a[at]) for a in arrays)

    def chunks(self, size: int = 4096) -> Iterator[tuple[torch.Tensor, ...]]:
        """Every row, ``size`` at a time (for checks that must see all the data in flat memory)."""
        check_positive_int(size, "chunk size")
        for start in range(0, len(self), size):
            yield self.rows(start, start + size)

    def block_order(self, block_permutation: torch.Tensor) -> torch.Tensor:
        """The row order of a permutation of the blocks: each block's rows in order, the blocks
        in the order given."""
        n, b = len(self), self.block_size
        starts = block_permutation.to(torch.long) * b
        offsets = torch.arange(b, device=starts.device)
        rows = (starts[:, None] + offsets[None, :]).reshape(-1)
        return rows[rows < n]

    @property
    def num_blocks(self) -> int:
        return -(-len(self) // self.block_size)


class ArrayRows(RowSource):
    """Rows of numpy arrays with one row per datapoint, e.g. memory-mapped ``.npy`` files::

        x = np.load("counts.npy", mmap_mode="r")
        fit(model.model, model.guide, ArrayRows(x), batch_size=128)

    :param arrays: ``x`` (2-D) then any aligned arrays (labels, covariates).
    """

    def __init__(self, *arrays: np.ndarray, block_size: int = 32, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(block_size=block_size, dtype=dtype)
        if not arrays:
            raise InputError("ArrayRows needs at least one array")
        if arrays[0].ndim != 2:
            raise InputError(f"data must be 2-D (datapoints x features), got shape {arrays[0].shape}")
        n = arrays[0].shape[0]
        for i, a in enumerate(arrays[1:], 1):
            if a.shape[0] != n:
                raise InputError(f"array {i} has {a.shape[0]} rows but x has {n}")
        for i, a in enumerate(arrays):
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                raise InputError(f"array {i} must be numeric, got dtype {a.dtype}")
        self.arrays = arrays

    def __len__(self) -> int:
        return int(self.arrays[0].shape[0])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, ...]:
        rows = tuple(np.array(a[start:stop]) for a in self.arrays)  # copies: the map can let go
        for a in self.arrays:
            _release(a, start, stop)
        return rows


def _release(a: np.ndarray, start: int, stop: int) -> None:
    """Tell the kernel that rows ``start:stop`` of a read-only memory map are no longer needed
    by this process (``madvise(MADV_DONTNEED)``): the pages stay in the page cache but leave
    the process's resident set, so reading a file larger than memory keeps the RSS flat."""
    mm = getattr(a, "_mmap", None)
    if not isinstance(a, np.memmap) or mm is None or a.mode != "r" or not hasattr(mmap, "MADV_DONTNEED"):
        return
    if not a.flags.c_contiguous or stop <= start:
        return
    row = a.strides[0]
    base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    begin = a.ctypes.data - base + start * row  # where the rows start in the map (a may be a slice)
    end = begin + (stop - start) * row
    first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the rows only
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        try:
            mm.madvise(mmap.MADV_DONTNEED, first, last - first)
        except (OSError, ValueError):
            pass
