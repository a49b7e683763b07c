"""Several data streams in one training run, and auxiliary objectives on some of them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyro_vae._checks import as_tensors, check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.infer.per_datapoint import rows_of


@dataclass(frozen=True, kw_only=True)
class Stream:
    """One data set of a training run: the tensors the program takes (``x`` or ``(x, y, ...)``,
    one row per datapoint), its own minibatch size and a name for errors and metrics.

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
    non-tensor argument passed through)."""
    batch_sizes: tuple[int, ...]
    names: tuple[str, ...] = field(default=())

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(t[0].shape[0] for t in self.tensors)

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
    """``data`` (a tensor, a tuple of tensors, or a sequence of :class:`Stream`) as checked
    :class:`StreamData`; ``batch_size=None`` means full batch."""
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    streams = (
        list(data)
        if isinstance(data, Sequence) and data and all(isinstance(s, Stream) for s in data)
        else [Stream(data=data, name="data")]
    )
    if any(isinstance(s, Stream) for s in streams) and not all(isinstance(s, Stream) for s in streams):
        raise InputError("data must be tensors or a sequence of Stream, not a mixture of both")
    tensors, sizes, names = [], [], []
    for i, s in enumerate(streams):
        t = s.tensors(i)
        b = s.batch_size if s.batch_size is not None else batch_size
        if b is not None:
            check_positive_int(b, f"batch_size of {s.name or f'stream {i}'}")
        tensors.append(t)
        sizes.append(min(b, t[0].shape[0]) if b is not None else t[0].shape[0])
        names.append(s.name or f"stream {i}")
    features = {t[0].shape[1:] for t in tensors}
    if len(features) > 1:
        raise InputError(f"the streams' data have different feature shapes: {sorted(map(tuple, features))}")
    return StreamData(tuple(tensors), tuple(sizes), tuple(names))
