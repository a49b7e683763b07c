"""Several data streams in one training run, and auxiliary objectives on some of them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_vae._checks import as_tensors, check_positive_int
from pyro_vae.data.rows import RowSource
from pyro_vae.errors import InputError
from pyro_vae.infer.per_datapoint import rows_of, take_rows


@dataclass(frozen=True, kw_only=True)
class Stream:
    """One data set of a training run: the tensors the program takes (``x`` or ``(x, y, ...)``,
    one row per datapoint, or a :class:`~pyro_vae.data.RowSource` read on demand), its own
    minibatch size and a name for errors and metrics.

    Pyro's semi-supervised VAE trains on a labelled stream ``(x, y)`` and an unlabelled stream
    ``(x,)`` in turn; ``fit(model, guide, [Stream(data=(x_l, y_l)), Stream(data=x_u)])`` does
    the same. Each stream is scaled to its own size: a minibatch of :math:`B_s` rows of a
    stream of :math:`N_s` estimates that stream's full-data objective, so one epoch's steps
    estimate :math:`\\sum_s \\mathcal L_s`.

    :param batch_size: rows per step (``None``: ``fit``'s ``batch_size``).
    """

    data: Any
    batch_size: int | None = None
    name: str = ""

    def tensors(self, index: int) -> tuple:
        return as_tensors(self.data, self.name or f"stream {index}")


@dataclass(frozen=True, kw_only=True)
class AuxiliaryObjective:
    """A second objective trained with the main one, as Pyro's SS-VAE adds its classifier loss:
    at every step on one of ``streams`` its loss is added to the main loss (the gradients
    sum, then one optimizer step).

    :param model: its model (e.g. ``ss_vae.model_classify``).
    :param guide: its guide (e.g. ``ss_vae.guide_classify``).
    :param loss: a Pyro loss (default ``pyro.infer.Trace_ELBO()``).
    :param streams: indices of the streams it applies to (``None``: all).
    """

    model: Callable
    guide: Callable
    loss: Any = None
    streams: tuple[int, ...] | None = None
    name: str = "auxiliary"


@dataclass(frozen=True)
class StreamData:
    """The checked tensors of each stream and its batch size."""

    tensors: tuple[tuple, ...]
    """Each stream's positional arguments (tensors with one row per datapoint, and any
    non-tensor argument passed through); for a stream read from a :class:`RowSource`, its
    first minibatch."""
    batch_sizes: tuple[int, ...]
    names: tuple[str, ...] = field(default=())
    sources: tuple[RowSource | None, ...] = field(default=())
    """Per stream, the :class:`RowSource` its rows are read from, or ``None`` (in memory)."""

    def source(self, index: int) -> RowSource | None:
        return self.sources[index] if self.sources else None

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(
            len(src) if (src := self.source(s)) is not None else t[0].shape[0]
            for s, t in enumerate(self.tensors)
        )

    def num_blocks(self, index: int) -> int:
        """How many units an epoch's permutation shuffles: rows, or a source's blocks."""
        src = self.source(index)
        return src.num_blocks if src is not None else self.sizes[index]

    def epoch_order(self, index: int, permutation: torch.Tensor) -> torch.Tensor:
        """The rows of an epoch in order, from a permutation of :meth:`num_blocks` units: the
        permutation itself for tensors (unchanged), the blocks' rows for a source."""
        src = self.source(index)
        return permutation if src is None else src.block_order(permutation)

    def take(self, index: int, rows: torch.Tensor) -> tuple:
        """The rows ``rows`` of stream ``index``, on the device of its first minibatch."""
        src = self.source(index)
        if src is None:
            return take_rows(self.tensors[index], rows)
        device = self.tensors[index][0].device
        return tuple(t.to(device) for t in src.take(rows))

    def head(self, index: int, count: int) -> tuple:
        """The first ``count`` rows of stream ``index`` (a bounded sample for metrics)."""
        src = self.source(index)
        return rows_of(self.tensors[index], 0, count) if src is None else src.rows(0, count)

    def first(self, index: int) -> tuple:
        """The first minibatch of stream ``index`` (for probes and registration)."""
        return rows_of(self.tensors[index], 0, self.batch_sizes[index])

    def minibatch(self, index: int) -> bool:
        return self.batch_sizes[index] < self.sizes[index]

    def schedule(self) -> list[tuple[int, int]]:
        """``(stream, batch)`` of every step of an epoch: each stream's batches in order, the
        streams interleaved in proportion to their number of batches (batch :math:`j` of
        :math:`M_s` sits at :math:`(j + \\frac12) / M_s`), so that no stream is exhausted
        long before another."""
        keyed = []
        for s, (n, b) in enumerate(zip(self.sizes, self.batch_sizes, strict=True)):
            count = math.ceil(n / b)
            keyed += [((j + 0.5) / count, s, j) for j in range(count)]
        return [(s, j) for _, s, j in sorted(keyed)]


def as_streams(data: Any, batch_size: int | None) -> StreamData:
    """``data`` (a tensor, a tuple of tensors, a :class:`~pyro_vae.data.RowSource`, or a
    sequence of :class:`Stream`) as checked :class:`StreamData`; ``batch_size=None`` means
    full batch (a source is then read whole into memory at every step)."""
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    streams = (
        list(data)
        if isinstance(data, Sequence) and data and all(isinstance(s, Stream) for s in data)
        else [Stream(data=data, name="data")]
    )
    if any(isinstance(s, Stream) for s in streams) and not all(isinstance(s, Stream) for s in streams):
        raise InputError("data must be tensors or a sequence of Stream, not a mixture of both")
    tensors, sizes, names, sources = [], [], [], []
    for i, s in enumerate(streams):
        b = s.batch_size if s.batch_size is not None else batch_size
        if b is not None:
            check_positive_int(b, f"batch_size of {s.name or f'stream {i}'}")
        src = s.data if isinstance(s.data, RowSource) else None
        if src is not None:
            if not len(src):
                raise InputError(f"{s.name or f'stream {i}'} has no rows")
            n = len(src)
            t = as_tensors(src.rows(0, b if b is not None else n), s.name or f"stream {i}")
        else:
            t = s.tensors(i)
            n = t[0].shape[0]
        tensors.append(t)
        sources.append(src)
        sizes.append(min(b, n) if b is not None else n)
        names.append(s.name or f"stream {i}")
    features = {t[0].shape[1:] for t in tensors}
    if len(features) > 1:
        raise InputError(f"the streams' data have different feature shapes: {sorted(map(tuple, features))}")
    return StreamData(tuple(tensors), tuple(sizes), tuple(names), tuple(sources))
