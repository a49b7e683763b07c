"""Data-parallel training over processes started by ``torchrun``: one process group, each
rank a shard of every global minibatch, gradients all-reduced after backward.

A Pyro program is a pair of callables, not one ``nn.Module`` whose ``forward`` computes the
loss, so ``DistributedDataParallel`` (which hooks one module's forward and backward) does not
fit it: the parameters live in Pyro's parameter store, created by ``pyro.param`` and
``pyro.module`` calls anywhere in ``model`` and ``guide``, some of them lazily by a loss
(a baseline network). We therefore all-reduce the gradients of the parameter store
ourselves, after ``loss_and_grads`` and before the optimizer step, in flattened buckets.

The scaling: with :math:`W` ranks, rank :math:`r` takes :math:`B_r` rows of the global
minibatch of :math:`B = \\sum_r B_r` rows and its program is scaled by :math:`N / B_r` (as
a single process with :math:`B_r` rows would be), so its loss is
:math:`L_r = \\frac{N}{B_r} \\sum_{i \\in b_r} \\ell_i + G` (:math:`G` the terms outside the
data plate, global latents). Each rank multiplies its gradient by :math:`w_r = B_r / B`
before the summing all-reduce:

.. math::

    \\sum_r w_r \\nabla L_r = \\nabla \\Big( \\frac{N}{B} \\sum_{i \\in b} \\ell_i + G \\Big),

the gradient a single process computes on the global batch :math:`b` (the same holds for
the loss value, which is reduced alike). With equal shards :math:`w_r = 1/W`: the average.

References:
    [1] Li et al. (2020), "PyTorch Distributed: experiences on accelerating data parallel
        training", VLDB 13.
    [2] Goyal et al. (2017), "Accurate, large minibatch SGD: training ImageNet in 1 hour",
        arXiv:1706.02677.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyro
import torch
import torch.distributed as dist
from torch import nn

from pyro_vae.errors import DistributedError, InputError

ENVIRONMENT = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""The variables ``torchrun`` sets for every process, read by :func:`process_group`."""

BUCKET_BYTES = 25 * 2**20
"""Gradient elements all-reduced together, as ``DistributedDataParallel``'s default bucket."""


@dataclass(frozen=True, kw_only=True)
class Distributed:
    """How :func:`~pyro_vae.train.fit` trains over several processes (``distributed=True``
    is ``Distributed()``).

    :param timeout: seconds any collective operation waits for the other ranks before the
        run fails with :class:`~pyro_vae.errors.DistributedError` (a dead or hung rank).
        It must exceed the longest time rank 0 works alone: the per-epoch metrics and the
        checkpoint.
    :param backend: ``"gloo"`` or ``"nccl"``; ``None``: nccl for CUDA data, gloo otherwise.
    """

    timeout: float = 1800.0
    backend: str | None = None


def in_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (its environment is set)."""
    return all(v in os.environ for v in ENVIRONMENT)


def rank() -> int:
    """This process's rank: the process group's, else ``torchrun``'s ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA (one GPU per process), else ``device``."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextmanager
def process_group(options: Distributed, device: torch.device) -> Iterator[None]:
    """The default process group, initialized from ``torchrun``'s environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) unless one exists already, and
    destroyed on exit if it was made here."""
    if not dist.is_available():
        raise InputError("this build of PyTorch has no torch.distributed")
    if dist.is_initialized():
        yield
        return
    missing = [v for v in ENVIRONMENT if v not in os.environ]
    if missing:
        raise InputError(
            f"distributed training needs torchrun's environment, and {', '.join(missing)} "
            "is not set; start the script with torchrun --nproc-per-node N ..., or initialize "
            "torch.distributed yourself first"
        )
    backend = options.backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise InputError(f"backend must be gloo or nccl, got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(local_device(device))
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=options.timeout))
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"could not join the process group ({backend}): {_first_line(e)}") from None
    try:
        yield
    finally:
        dist.destroy_process_group()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _collective(what: str) -> Callable:
    """Turn a failed collective (a peer died, a timeout) into one clear
    :class:`~pyro_vae.errors.DistributedError`."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(self: DataParallel, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except (RuntimeError, dist.DistBackendError) as e:
                raise DistributedError(
                    f"rank {self.rank} of {self.world_size} lost the other processes while {what} "
                    f"(a rank died, hung, or took longer than the timeout): {_first_line(e)}"
                ) from None

        return run

    return wrap


def program_modules(*programs: Callable) -> list[nn.Module]:
    """The ``nn.Module`` s reachable from callables: a bound method's object (or the modules
    among its attributes), a ``functools.partial`` 's function and arguments, the cells of a
    closure. Their buffers (BatchNorm statistics) are broadcast with the parameters."""
    found: dict[int, nn.Module] = {}

    def visit(obj: Any, depth: int) -> None:
        if depth > 3 or obj is None:
            return
        if isinstance(obj, nn.Module):
            found.setdefault(id(obj), obj)
            return
        if isinstance(obj, functools.partial):
            for o in (obj.func, *obj.args, *obj.keywords.values()):
                visit(o, depth + 1)
            return
        owner = getattr(obj, "__self__", None)
        if owner is not None:
            visit(owner, depth + 1)
            if not isinstance(owner, nn.Module):
                for o in vars(owner).values() if hasattr(owner, "__dict__") else ():
                    visit(o, depth + 1)
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                visit(cell.cell_contents, depth + 1)
            except ValueError:  # an empty cell
                pass

    for p in programs:
        visit(p, 0)
    return list(found.values())


def _buckets(tensors: list[torch.Tensor]) -> Iterator[list[int]]:
    """Indices of ``tensors`` grouped by dtype and device, in buckets of at most
    :data:`BUCKET_BYTES`."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    for idx in groups.values():
        bucket: list[int] = []
        size = 0
        for i in idx:
            nbytes = tensors[i].numel() * tensors[i].element_size()
            if bucket and size + nbytes > BUCKET_BYTES:
                yield bucket
                bucket, size = [], 0
            bucket.append(i)
            size += nbytes
        if bucket:
            yield bucket


class AgreedStop:
    """A stop request all ranks agree on: set at a step's all-reduce when any rank's own
    :class:`~pyro_vae.train.interrupt.GracefulStop` has a signal, so that every rank stops
    after the same step (a signal arriving on one rank between the all-reduce and the end of
    the step counts at the next step)."""

    def __init__(self, local: Any) -> None:
        self.local = local
        self.requested: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.requested).name if self.requested is not None else ""


def _seed(seed: int, rank: int, step: int) -> int:
    return ((seed * 1_000_003 + rank) * 7919 + step) % (2**63)


class DataParallel:
    """The distributed side of one :func:`~pyro_vae.train.fit` run (made by :func:`start`):
    the shard of each global minibatch, the gradient all-reduce, the broadcasts from rank 0
    and the per-rank random number generators."""

    def __init__(self, *, modules: list[nn.Module], seed: int | None) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.modules = modules
        self.seed = seed if seed is not None else 0
        self._known: set[str] = set()

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes metrics, checkpoints and figures."""
        return self.rank == 0

    def shard(self, index: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Rank :math:`r`'s rows of a global minibatch and their number :math:`B_r`: its
        :math:`r`-th contiguous part of ``index`` (``torch.tensor_split``, sizes differing by
        at most one). A rank left without rows (a last batch smaller than :math:`W`) runs on
        the batch's first row with :math:`B_r = 0`, so weight 0: it contributes nothing."""
        part = torch.tensor_split(index, self.world_size)[self.rank]
        return (part, part.numel()) if part.numel() else (index[:1], 0)

    def check_batches(
        self, batch_sizes: tuple[int, ...], minibatch: list[bool], names: tuple[str, ...]
    ) -> None:
        for b, mb, name in zip(batch_sizes, minibatch, names, strict=True):
            if mb and b < self.world_size:
                raise InputError(
                    f"the global batch of {name} has {b} rows, fewer than the {self.world_size} "
                    "processes; use a batch size of at least the number of processes"
                )

    @_collective("broadcasting the parameters")
    @torch.no_grad()
    def broadcast_state(self, params: dict[str, torch.Tensor]) -> None:
        """Rank 0's parameters and module buffers to every rank."""
        tensors = [params[k] for k in sorted(params)]
        tensors += [b for m in self.modules for b in m.buffers()]
        for bucket in _buckets(tensors):
            chunk = [tensors[i] for i in bucket]
            flat = torch.cat([t.reshape(-1) for t in chunk])
            dist.broadcast(flat, src=0)
            for t, part in zip(chunk, flat.split([t.numel() for t in chunk]), strict=True):
                t.copy_(part.view_as(t))
        self._known |= set(params)

    def seed_rank(self, step: int) -> None:
        """Give ranks other than 0 a random number generator of their own (rank 0 keeps the
        one a single process would have), from the seed, the rank and the step."""
        if self.rank:
            torch.manual_seed(_seed(self.seed, self.rank, step))

    @_collective("gathering the random number generators")
    def gather_rng(self) -> list[torch.Tensor]:
        """Every rank's CPU random number generator state (for rank 0's checkpoint)."""
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, torch.get_rng_state())
        return states

    def restore_rng(self, saved: list[torch.Tensor] | None, step: int) -> None:
        """This rank's saved generator when the checkpoint has one for it (same or more
        processes before), else a fresh one (:meth:`seed_rank`); rank 0's is restored by
        :meth:`~pyro_vae.train.TrainState.restore`."""
        if not self.rank:
            return
        if saved is not None and self.rank < len(saved):
            torch.set_rng_state(saved[self.rank])
            if torch.cuda.is_available():  # the checkpoint's CUDA generators are rank 0's
                torch.cuda.manual_seed_all(_seed(self.seed, self.rank, step))
        else:
            self.seed_rank(step)

    @_collective("sharing rank 0's epoch record")
    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @_collective("waiting at a barrier")
    def barrier(self) -> None:
        dist.barrier()

    def agreed(self, stop: Any) -> AgreedStop:
        """The stop request of this run's steps, agreed on by all ranks."""
        return AgreedStop(stop)

    def reducer(self, rows: int, total: int, stop: AgreedStop) -> Callable[[float], float]:
        """The hook :func:`~pyro_vae.train.train_step` calls between backward and the
        optimizer step, for a step where this rank has ``rows`` of a global batch of ``total``
        rows (``rows == total`` for a full-batch stream every rank computes whole)."""
        weight = rows / total if rows != total else 1.0 / self.world_size
        return functools.partial(self._reduce, weight=weight, stop=stop)

    @_collective("all-reducing the gradients")
    @torch.no_grad()
    def _reduce(self, value: float, *, weight: float, stop: AgreedStop) -> float:
        """All-reduce :math:`\\sum_r w_r \\nabla L_r` into every parameter's ``.grad`` and
        return :math:`\\sum_r w_r L_r`. A parameter no rank has a gradient for keeps
        ``grad=None`` (the optimizer then skips it, as in one process); a stop requested on
        one rank (SIGINT/SIGTERM) is requested on all, so that all stop at the same step."""
        store = dict(pyro.get_param_store().named_parameters())
        new = {k: v for k, v in store.items() if k not in self._known}
        if new:  # created by a loss on its first step: rank 0's initial values everywhere
            self.broadcast_state(new)
            self._known |= set(store)
        names = sorted(store)
        tensors = [store[k] for k in names]
        head = torch.tensor(
            [weight * value, float(stop.local.requested or 0)] + [float(t.grad is not None) for t in tensors],
            dtype=torch.float64,
            device=tensors[0].device,
        )
        grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in tensors]
        dist.all_reduce(head)
        for bucket in _buckets(grads):
            chunk = [grads[i] for i in bucket]
            flat = torch.cat([g.reshape(-1) for g in chunk]).mul_(weight)
            dist.all_reduce(flat)
            for g, part in zip(chunk, flat.split([g.numel() for g in chunk]), strict=True):
                g.copy_(part.view_as(g))
        for t, g, present in zip(tensors, grads, head[2:].tolist(), strict=True):
            t.grad = g if present else None
        if head[1] > 0 and stop.requested is None:  # some rank has a signal: all stop now
            stop.requested = stop.local.requested or signal.SIGTERM
        return float(head[0])


def start(programs: tuple[Callable, ...], seed: int | None) -> DataParallel:
    """The :class:`DataParallel` of a run, in the process group of :func:`process_group`."""
    return DataParallel(modules=program_modules(*programs), seed=seed)


def as_options(distributed: Distributed | bool) -> Distributed | None:
    """``fit``'s ``distributed=`` as options, ``None`` for one process."""
    if distributed is True:
        return Distributed()
    if distributed is False or distributed is None:
        return None
    if not isinstance(distributed, Distributed):
        raise InputError(
            f"distributed must be True, False or a Distributed, got {type(distributed).__name__}"
        )
    return distributed


@contextmanager
def maybe_process_group(options: Distributed | None, device: torch.device) -> Iterator[None]:
    """:func:`process_group` when ``options`` is given, else nothing."""
    if options is None:
        yield
        return
    with process_group(options, device):
        yield
