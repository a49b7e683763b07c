"""Stochastic variational inference for any Pyro model/guide pair."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import Trace_ELBO
from tqdm.auto import tqdm

from pyro_vae._checks import as_tensors, check_positive, check_positive_int
from pyro_vae._io import BackgroundWrites
from pyro_vae.errors import InputError, NonFiniteLossError, TrainingInterrupted
from pyro_vae.infer.captured import CapturedLoss, capturable
from pyro_vae.infer.captured_log_weights import CapturedLogWeights
from pyro_vae.infer.mean_field_elbo import MeanFieldELBO
from pyro_vae.infer.modes import evaluation_mode
from pyro_vae.infer.onednn_matmul import resolve_matmul
from pyro_vae.infer.particles import forked_rng, record
from pyro_vae.infer.scaling import scaled_to_data
from pyro_vae.train.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.train.distributed import DataParallel, Distributed, as_options, maybe_process_group, start
from pyro_vae.train.interrupt import GracefulStop
from pyro_vae.train.metrics import MetricsPlan, epoch_metrics, plan_metrics
from pyro_vae.train.optimizers import default_optimizer
from pyro_vae.train.schedules import KLWarmup
from pyro_vae.train.state import TrainState
from pyro_vae.train.step import FIT_CAPTURE_AFTER, FIT_COMPILE_AFTER, resolve_compile, step_loss, train_step
from pyro_vae.train.streams import AuxiliaryObjective, StreamData, as_streams
from pyro_vae.train.tracking import LogMarginalTracker

Data = Any
"""``x``, a tuple ``(x, y, ...)`` of tensors with one row per datapoint, or a sequence of
:class:`~pyro_vae.train.Stream`."""
OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    :ivar history: one dict per epoch (``epoch``, ``step``, ``kl_weight``,
        ``train_objective``, ``train_elbo``, ``train_rate``, ``train_distortion``,
        ``val_elbo``, ``val_rate``, ``val_distortion``, ``seconds``), all per datapoint in
        nats; ``val_*`` are NaN without validation data, the per-datapoint metrics NaN when
        the program has none (see ``metrics``).
    :ivar param_state: the private parameter store the program was trained in, as
        ``{"params": ..., "constraints": ...}``. Programs built from ``nn.Module`` s
        registered with ``pyro.module`` hold their trained weights themselves; programs
        using bare ``pyro.param`` s read them inside
        ``pyro.get_param_store().scope(result.param_state)``.
    :ivar num_steps: optimizer steps taken.
    :ivar scaling: per stream, how minibatches were scaled to the data set: ``"program"``
        (the program's own subsampled plate), ``"rescaled"`` (``fit`` rescaled its data
        plate) or ``"full batch"``.
    :ivar metrics: why per-datapoint metrics are missing, or ``""``.
    :ivar captured_steps: steps replayed from a captured graph (see ``capture_after``).
    :ivar eager_reason: why the steps ran eagerly (``"capture_after=None"``, a loss that
        cannot be captured, a program that cannot be traced), or ``""``.
    :ivar matmul: the kernels the replayed steps' matrix products ran on (``"aten"`` or
        ``"onednn"``; ``"aten"`` when no step was replayed, or when a graph on oneDNN's kernels
        disagreed with PyTorch's at capture and PyTorch's were kept).
    :ivar compiled: whether replayed steps ran graphs compiled by TorchInductor (``compile``).
    """

    history: list[dict[str, float]]
    param_state: dict[str, dict[str, Any]] = field(repr=False)
    num_steps: int
    scaling: tuple[str, ...] = ()
    metrics: str = ""
    captured_steps: int = 0
    eager_reason: str = ""
    matmul: str = "aten"
    compiled: bool = False

    def last(self, key: str) -> float:
        return self.history[-1][key] if self.history else math.nan


@dataclass(frozen=True)
class _Bound:
    """One objective as it runs on one stream: the (possibly rescaled) program, its loss, and
    the keywords it takes."""

    model: Callable
    guide: Callable
    loss: Any
    num_data: int | None
    kl_weight: bool

    def kwargs(self, weight: float | None) -> dict[str, Any]:
        kw: dict[str, Any] = {} if self.num_data is None else {"num_data": self.num_data}
        if self.kl_weight and weight is not None:
            kw["kl_weight"] = weight
        return kw


def _accepts(fn: Callable, keyword: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _permutation(n: int, seed: int | None, epoch: int, stream: int = 0) -> torch.Tensor:
    gen = torch.Generator()
    gen.manual_seed(
        ((seed if seed is not None else torch.initial_seed()) * 1_000_003 + epoch) * 7919 + stream
    )
    return torch.randperm(n, generator=gen)


def _store_params() -> dict[str, torch.Tensor]:
    return dict(pyro.get_param_store().named_parameters())


def _bind(
    objectives: list[tuple[Callable, Callable, Any, str]],
    auxiliary: Sequence[AuxiliaryObjective],
    streams: StreamData,
    *,
    plate_name: str | None,
    kl_warmup: KLWarmup | None,
) -> tuple[list[list[_Bound]], tuple[str, ...]]:
    """Per stream, the objectives that train on it, each scaled to the stream's size; and
    how the main program is scaled on each stream. Checks every keyword it will pass."""
    bound: list[list[_Bound]] = []
    scaling = []
    for s, n in enumerate(streams.sizes):
        first = streams.first(s)
        on_stream = []
        for i, (model, guide, loss, what) in enumerate(objectives):
            if i > 0 and auxiliary[i - 1].streams is not None and s not in auxiliary[i - 1].streams:
                continue
            takes_weight = kl_warmup is not None and i == 0
            for program, role in ((model, "model"), (guide, "guide")):
                if takes_weight and not _accepts(program, "kl_weight"):
                    raise InputError(f"KL warm-up passes kl_weight= to the {role}, which does not accept it")
            if not streams.minibatch(s):
                on_stream.append(_Bound(model, guide, loss, None, takes_weight))
                scaling.append("full batch") if i == 0 else None
                continue
            num_data = n if _accepts(model, "num_data") and _accepts(guide, "num_data") else None
            kw = {} if num_data is None else {"num_data": num_data}
            if takes_weight:
                kw["kl_weight"] = kl_warmup(0.0)  # type: ignore[misc]
            try:
                m, g, how = scaled_to_data(model, guide, first, kw, num_data=n, plate_name=plate_name)
            except InputError as e:
                raise InputError(
                    f"minibatch training of the {what} on {streams.names[s]} needs a data plate to "
                    f"scale by N/B: {e}; or train full-batch with batch_size=None"
                ) from None
            on_stream.append(_Bound(m, g, loss, num_data, takes_weight))
            if i == 0:
                scaling.append(how)
        bound.append(on_stream)
    return bound, tuple(scaling)


@torch.no_grad()
def _register(bound: list[list[_Bound]], streams: StreamData, kl_warmup: KLWarmup | None) -> None:
    """One validated run of every objective on each stream's first minibatch, with modules in
    eval mode and the random number generators forked: parameters are created now, shape
    errors surface now with Pyro's messages, and no running statistic changes."""
    weight = kl_warmup(0.0) if kl_warmup is not None else None
    with pyro.validation_enabled(True), evaluation_mode():
        for s, on_stream in enumerate(bound):
            first = streams.first(s)
            for b in on_stream:
                with forked_rng(first):
                    record(b.model, b.guide, first, b.kwargs(weight))


def _resume(
    path: str | Path,
    bound: list[list[_Bound]],
    streams: StreamData,
    params: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    losses: list[Any],
    devices: list[torch.device],
) -> TrainState:
    """Restore a run from its checkpoint. Parameters that a loss creates on its first step (a
    baseline network) are created the same way first, in a second parameter group as during
    training."""
    checkpoint = load_checkpoint(path, map_location=streams.tensors[0][0].device)
    if set(checkpoint["params"]) - set(params):
        first = streams.first(0)
        with torch.random.fork_rng(devices=devices):
            for b in bound[0]:
                b.loss.loss_and_grads(b.model, b.guide, *first, **b.kwargs(None))
        _adopt_new_params(params, opt)
        for p in params.values():
            p.grad = None
    restored = TrainState.restore(checkpoint, params, opt, losses, cuda=bool(devices), path=path)
    step = bound[0][0].loss
    if isinstance(step, CapturedLoss):  # after the calls above, which counted as runs
        step.load_capture_state(checkpoint.get("capture_state") or {})
    return restored


def _adopt_new_params(params: dict[str, torch.Tensor], opt: torch.optim.Optimizer) -> None:
    """Give the optimizer the parameters created since it was built (lazily, by a loss)."""
    new = {k: v for k, v in _store_params().items() if k not in params}
    if new:
        opt.add_param_group({"params": list(new.values())})
        params.update(new)


def _run_epoch(
    state: TrainState,
    bound: list[list[_Bound]],
    streams: StreamData,
    opt: torch.optim.Optimizer,
    params: dict[str, torch.Tensor],
    *,
    seed: int | None,
    kl_warmup: KLWarmup | None,
    transform: Callable | None,
    checkpoint: str | Path | None,
    writes: BackgroundWrites | None = None,
    bar: Any,
    stop: GracefulStop,
    group: DataParallel | None = None,
) -> float | None:
    """One epoch: every stream's minibatches, interleaved (:meth:`StreamData.schedule`),
    from ``state.epoch_step`` on. Returns the training objective per datapoint,
    :math:`-\\sum_s \\overline{\\text{loss}}_s / \\sum_s N_s` (each stream's mean loss estimates
    its full-data loss), or ``None`` when ``stop`` was requested: the epoch's progress is
    then in ``state`` (its steps so far, the loss totals), for a checkpoint."""
    epoch = state.epoch
    orders = [  # a full-batch stream keeps its order: rows may own parameters (AutoNormal)
        streams.epoch_order(s, _permutation(streams.num_blocks(s), seed, epoch, s)).to(t[0].device)
        if streams.minibatch(s)
        else torch.arange(n, device=t[0].device)
        for s, (n, t) in enumerate(zip(streams.sizes, streams.tensors, strict=True))
    ]
    if state.epoch_step == 0:
        state.epoch_totals, state.epoch_counts = [0.0] * len(bound), [0] * len(bound)
    totals, counts = state.epoch_totals, state.epoch_counts
    for s, j in streams.schedule()[state.epoch_step :]:
        size = streams.batch_sizes[s]
        idx = orders[s][j * size : (j + 1) * size]
        rows = total = len(idx)
        if group is not None and streams.minibatch(s):  # this rank's shard of the global batch
            idx, rows = group.shard(idx)
        batch = streams.take(s, idx)
        if transform is not None:
            batch = transform(batch)
        n = streams.sizes[s]
        weight = kl_warmup(epoch + j * size / n) if kl_warmup is not None else None
        main, *aux = bound[s]
        value = train_step(
            main.loss,
            opt,
            main.model,
            main.guide,
            batch,
            main.kwargs(weight),
            auxiliary=[(b.loss, b.model, b.guide, b.kwargs(weight)) for b in aux],
            before_step=group.reducer(rows, total, stop) if group is not None else None,
        )
        if not math.isfinite(value):
            # the last checkpoint on disk before it is named, or why it is not
            failed = writes.wait(raise_error=False) if writes is not None else None
            if failed is not None:  # its message says whether an earlier one is left
                kept = f"; the last checkpoint could not be written ({failed})"
            elif checkpoint is not None and Path(checkpoint).exists():
                kept = f"; the last checkpoint {checkpoint} is unchanged"
            else:
                kept = ""
            raise NonFiniteLossError(
                f"non-finite loss {value} at epoch {epoch + 1}, step {state.step + 1} "
                f"({streams.names[s]}, batch {j + 1}){kept}; try a lower learning rate, or "
                "check the data's scale",
                epoch=epoch,
                step=state.step,
            )
        if len(pyro.get_param_store()) != len(params):
            _adopt_new_params(params, opt)
        totals[s] += value
        counts[s] += 1
        state.step += 1
        state.epoch_step += 1
        bar.update()
        if state.step % 20 == 0:
            bar.set_postfix(epoch=epoch + 1, loss=f"{value / n:.3f}", refresh=False)
        if stop.requested is not None:
            return None
    state.epoch_step = 0
    return -sum(t / max(c, 1) for t, c in zip(totals, counts, strict=True)) / sum(streams.sizes)


def _check_options(
    streams: StreamData,
    val: tuple | None,
    auxiliary: Sequence[AuxiliaryObjective],
    *,
    epochs: int,
    lr: float,
    eval_particles: int,
) -> None:
    """Every option of :func:`fit` checked before any work, with what is wrong named."""
    if val is not None and val[0].shape[1:] != streams.tensors[0][0].shape[1:]:
        raise InputError(
            f"validation data has {val[0].shape[1]} features but data has {streams.tensors[0][0].shape[1]}"
        )
    check_positive_int(epochs, "epochs", minimum=0)
    check_positive(lr, "learning rate")
    check_positive_int(eval_particles, "eval_particles")
    for i, a in enumerate(auxiliary):
        if not isinstance(a, AuxiliaryObjective):
            raise InputError(f"auxiliary[{i}] must be an AuxiliaryObjective, got {type(a).__name__}")
        for s in a.streams or ():
            if not 0 <= s < len(streams.sizes):
                raise InputError(
                    f"auxiliary objective '{a.name}' names stream {s}; there are {len(streams.sizes)}"
                )


def _stopped(
    state: TrainState,
    stop: GracefulStop,
    checkpoint: str | Path | None,
    params: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    losses: list[Any],
    *,
    cuda: bool,
    group: DataParallel | None = None,
    step: Any = None,
    writes: BackgroundWrites | None = None,
) -> None:
    """Write the checkpoint of a run stopped by a signal mid-epoch and raise
    :class:`~pyro_vae.errors.TrainingInterrupted` saying how to go on (once it is on disk)."""
    where = f"{stop.name} at epoch {state.epoch + 1}, step {state.step}"
    if checkpoint is None:
        raise TrainingInterrupted(
            f"stopped on {where}; no checkpoint was written (pass checkpoint= to make a run resumable)",
            epoch=state.epoch,
            step=state.step,
        )
    _save(checkpoint, state, params, opt, losses, cuda=cuda, group=group, step=step, writes=writes)
    if writes is not None:
        writes.wait()
    raise TrainingInterrupted(
        f"stopped on {where}; checkpoint written to {checkpoint}: resume with resume=True "
        "(pyro-vae train --out RUN_DIR --resume)",
        epoch=state.epoch,
        step=state.step,
    )


def _train(
    state: TrainState,
    bound: list[list[_Bound]],
    streams: StreamData,
    opt: torch.optim.Optimizer,
    params: dict[str, torch.Tensor],
    losses: list[Any],
    *,
    metrics: MetricsPlan,
    program: tuple[Callable, Callable, tuple | None],
    epochs: int,
    seed: int | None,
    kl_warmup: KLWarmup | None,
    transform: Callable | None,
    checkpoint: str | Path | None,
    cuda: bool,
    progress: bool,
    group: DataParallel | None = None,
    tracker: LogMarginalTracker | None = None,
) -> None:
    """Epochs until ``epochs``: train, record the metrics, checkpoint atomically (each
    checkpoint serialized at the end of its epoch and written while the next one trains,
    :class:`~pyro_vae._io.BackgroundWrites`; the last is on disk when this returns or raises)."""
    model, guide, val = program
    step = bound[0][0].loss
    bar = tqdm(
        total=(epochs - state.epoch) * len(streams.schedule()),
        disable=not progress or (group is not None and not group.main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5,
    )
    with bar, pyro.validation_enabled(False), GracefulStop() as stop, BackgroundWrites() as writes:
        stop = group.agreed(stop) if group is not None else stop  # all ranks stop at one step
        while state.epoch < epochs:
            tic = time.perf_counter()
            if isinstance(step, CapturedLoss):
                step.check_next()  # the epoch's first replay is checked against eager
            objective = _run_epoch(
                state,
                bound,
                streams,
                opt,
                params,
                seed=seed,
                kl_warmup=kl_warmup,
                transform=transform,
                checkpoint=checkpoint,
                writes=writes,
                bar=bar,
                stop=stop,
                group=group,
            )
            if objective is None:
                _stopped(
                    state,
                    stop,
                    checkpoint,
                    params,
                    opt,
                    losses,
                    cuda=cuda,
                    group=group,
                    step=step,
                    writes=writes,
                )
            record = {
                "epoch": state.epoch + 1,
                "step": state.step,
                "kl_weight": kl_warmup(state.epoch + 1) if kl_warmup else 1.0,
                "train_objective": objective,
            }
            if group is None or group.main:
                record |= epoch_metrics(metrics, model, guide, val, losses[0])
                if tracker is not None:
                    record |= tracker(state.epoch + 1, model, guide, val, plate_name=metrics.plate_name)
            record["seconds"] = time.perf_counter() - tic
            if group is not None:  # rank 0's record and module buffers on every rank
                record = group.share(record)
                group.broadcast_state({})
            state.history.append(record)
            state.epoch += 1
            bar.set_postfix(epoch=state.epoch, val_elbo=f"{record['val_elbo']:.3f}", refresh=False)
            if checkpoint is not None:
                _save(
                    checkpoint, state, params, opt, losses, cuda=cuda, group=group, step=step, writes=writes
                )


def _save(
    checkpoint: str | Path,
    state: TrainState,
    params: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    losses: list[Any],
    *,
    cuda: bool,
    group: DataParallel | None,
    step: Any = None,
    writes: BackgroundWrites | None = None,
) -> None:
    """The checkpoint, written atomically (with ``step``'s capture state, when it is a
    :class:`~pyro_vae.infer.captured.CapturedLoss`; in the background with ``writes``); in a
    distributed run by rank 0 alone, with every rank's random number generator, while the
    others wait until it is on disk."""
    saved = state.to_checkpoint(params, opt, losses, cuda=cuda)
    if isinstance(step, CapturedLoss):
        saved["capture_state"] = step.capture_state()
    if group is None:
        save_checkpoint(checkpoint, saved, writes=writes)
        return
    saved["rank_rng"] = group.gather_rng()
    if group.main:
        save_checkpoint(checkpoint, saved)  # in line: every rank may name it once past the barrier
    group.barrier()


def fit(
    model: Callable,
    guide: Callable,
    data: Data,
    *,
    validation: Data | None = None,
    loss: Any = None,
    auxiliary: Sequence[AuxiliaryObjective] = (),
    optimizer: OptimizerFactory | None = None,
    lr: float = 1e-3,
    epochs: int = 10,
    batch_size: int | None = 128,
    seed: int | None = 0,
    kl_warmup: KLWarmup | None = None,
    transform: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    plate_name: str | None = None,
    eval_particles: int = 1,
    eval_max_points: int = 500,
    eval_batch_size: int = 1024,
    progress: bool = True,
    distributed: bool | Distributed = False,
    track_log_marginal: int | None = None,
    track_every: int = 1,
    capture_after: int | None = FIT_CAPTURE_AFTER,
    matmul: str = "auto",
    compile: bool | None = None,
) -> FitResult:
    """Fit ``model``/``guide`` to ``data`` by stochastic variational inference [1].

    Each step draws a minibatch of ``batch_size`` rows (a fresh permutation per epoch).
    The minibatch objective is scaled to an unbiased estimate of the full-data one whatever
    the program does: a program whose data plate declares the data set's size
    (``pyro.plate("data", num_data, subsample=...)``, with ``num_data=N`` passed to any
    program that accepts the keyword) is left alone; a program whose data plate has the
    batch's size (``pyro.plate("data", len(x))``, Pyro's examples) is rescaled by :math:`N/B`
    (:class:`~pyro_vae.infer.scaling.ScaleDataPlate`); ``result.scaling`` says which. With
    ``batch_size=None`` (or :math:`\\ge N`) every step uses all the data.

    Several data sets train together as a sequence of :class:`~pyro_vae.train.Stream`
    (Pyro's SS-VAE: a labelled stream ``(x, y)`` and an unlabelled one ``(x,)``), their
    minibatches interleaved, each scaled to its own size; ``auxiliary``
    (:class:`~pyro_vae.train.AuxiliaryObjective`) adds further objectives (a classifier's
    loss) on some streams, their gradients summed into one optimizer step.

    Any Pyro ELBO works as ``loss`` (``Trace_ELBO``, ``TraceGraph_ELBO``,
    ``TraceEnum_ELBO``, ...); the default is :class:`~pyro_vae.infer.MeanFieldELBO`
    (Pyro's ``TraceMeanField_ELBO`` estimator, analytic KL, for reparameterized guides).

    Isolation: the program is trained in a private, initially empty Pyro parameter
    store, so parameters of one model never leak into (or are clobbered by) another's;
    the global store is left exactly as it was. See :class:`FitResult` for where the
    trained parameters are. Per-epoch metrics are evaluated with every module in eval mode,
    so they change no running statistic.

    Determinism and resumption: with a ``seed`` the run is reproducible. With a
    ``checkpoint`` path the full training state (:class:`~pyro_vae.train.TrainState`:
    parameters, optimizer, RNG, history, and the state of losses that have their own,
    :class:`~pyro_vae.infer.StatefulLoss`) is written atomically after every epoch;
    ``resume=True`` continues from it and ends with the same parameters as an uninterrupted
    run. SIGINT (Ctrl-C) or SIGTERM stops the run at the end of the current step: the
    checkpoint is written then, mid-epoch, and :class:`~pyro_vae.errors.TrainingInterrupted`
    is raised; resuming from it ends bitwise equal to an uninterrupted run (tested). A second
    SIGINT interrupts at once.

    :param data: ``x``, a tuple ``(x, y, ...)`` of tensors with one row per datapoint, a
        :class:`~pyro_vae.data.RowSource` (rows read on demand, in shuffled blocks of
        contiguous rows: data larger than memory), or a sequence of :class:`~pyro_vae.train.Stream`.
    :param validation: held-out data (tensors) for the main program.
    :param optimizer: ``params -> torch.optim.Optimizer``; default Adam at ``lr``, fused where
        the parameters allow it (:func:`~pyro_vae.train.optimizers.default_optimizer`).
    :param kl_warmup: passes ``kl_weight=w`` to model and guide every step.
    :param transform: applied to each training minibatch (e.g. dynamic binarization).
    :param plate_name: the data plate (found by its size, the rows of ``x``, when omitted).
    :param eval_max_points: training rows (per stream) used for the per-epoch training metrics
        (500 by default: on the default ``pyro-vae train`` the metrics of 2000 rows took 13.5% of
        each epoch; ``train_objective`` is the running estimate over all rows).
    :param distributed: train data-parallel over the processes of ``torchrun`` (``True``, or a
        :class:`~pyro_vae.train.Distributed` for options): ``batch_size`` is then the global
        batch, each rank takes its shard of it, gradients are all-reduced so that every step is
        the step one process takes on the global batch, and only rank 0 writes the checkpoint
        (:mod:`pyro_vae.train.distributed`; docs/scaling-up.md).
    :param track_log_marginal: ``K``: every ``track_every`` epochs, record the held-out
        :math:`\\mathcal L_K` and the ELBO with their errors and gap
        (:class:`~pyro_vae.train.tracking.LogMarginalTracker`: columns ``val_lk``,
        ``val_lk_se``, ``val_lk_elbo``, ``val_lk_elbo_se``, ``val_lk_gap``, ``val_lk_gap_se``,
        NaN in the other epochs) on up to ``eval_max_points`` validation rows. Needs
        ``validation``; changes no draw of the training.
    :param capture_after: the main loss's step is captured and replayed
        (:class:`~pyro_vae.infer.captured.CapturedLoss`: the program's tensor operations without
        its Python) once a structure (batch shape, keyword values, parameters, module modes) has
        run this many times eagerly; the same draws, values and gradients as the eager step
        (tested bitwise), every replay that is a power of two and the first of every epoch
        checked against an eager run. ``None``: every step eager. Losses with state of their
        own (baselines) and Pyro's ELBOs are always eager. Bitwise with ``matmul="aten"`` (and
        with the default ``"auto"`` where it resolves so).
    :param matmul: the kernels of the captured graphs' float32 CPU matrix products (the step's
        and the tracked bound's): ``"aten"`` (PyTorch's BLAS, bitwise the eager step),
        ``"onednn"`` (oneDNN's: values and gradients equal to the eager step's to float
        rounding, every check so) or ``"auto"``: oneDNN on CPUs other than Intel's with
        AVX-512, where MKL's float32 GEMM ran at half oneDNN's rate (:mod:`pyro_vae.infer.onednn_matmul`;
        ``result.matmul`` says which ran). Eager steps run PyTorch's kernels either way; a
        resumed run replays where the run it continues did (the checkpoint keeps how often
        each structure ran), so it ends bit for bit as the uninterrupted run. The default is
        ``"auto"``: the same kernels in every run on one machine, the fastest measured for
        it; on the AMD EPYC host with AVX-512 of docs/benchmarks.md it took the replayed step
        from 0.88x to 0.70x the hand-written eager step, and the compiled one from 0.76x to
        0.60x. Pass ``"aten"`` for steps bitwise the eager ones on every machine.
    :param compile: also compile each captured step graph with TorchInductor
        (:class:`~pyro_vae.infer.captured.CapturedLoss` ``compile=True``): its elementwise work
        fused, the step 0.74x the hand-written one against 0.80x uncompiled on the Intel host
        of docs/benchmarks.md. Values and gradients equal the eager step's to float rounding
        (the compiled graph is checked against the bitwise-checked one at capture, and the
        uncompiled graph kept where they disagree; ``result.compiled`` says which ran).
        Compiling takes seconds for each structure, once, and needs a C++ compiler. ``None``
        (the default): compile on runs of at least
        :data:`~pyro_vae.train.step.COMPILE_STEPS` planned steps (captured, in one process,
        with a compiler found), where it pays back, and then only the structures that have
        run :data:`~pyro_vae.train.step.FIT_COMPILE_AFTER` times (the full batches, not a
        smaller last one); shorter runs are replayed uncompiled. The compiled graph calls the
        products on the kernels ``matmul`` names (with ``"onednn"``, oneDNN's, from the
        compiled code). ``True`` compiles every structure at capture, and needs
        ``capture_after``. A resumed run replays (compiled) where the run it continues did.
    :raises InputError: bad data or options, before anything runs.
    :raises NonFiniteLossError: a NaN/inf loss; parameters are not updated with it and the
        last checkpoint is left intact.

    References:
        [1] Hoffman, Blei, Wang & Paisley (2013), "Stochastic variational inference", JMLR 14.
    """
    streams = as_streams(data, batch_size)
    val = as_tensors(validation, "validation data") if validation is not None else None
    _check_options(streams, val, auxiliary, epochs=epochs, lr=lr, eval_particles=eval_particles)
    if resume and checkpoint is None:
        raise InputError("resume=True needs a checkpoint path")
    if compile and capture_after is None:
        raise InputError("compile=True compiles the captured step; capture_after=None captures nothing")
    matmul = resolve_matmul(matmul)
    # the default compiles only the structures that run often; compile=True compiles at capture
    compile_after = FIT_COMPILE_AFTER if compile is None else None
    compile = resolve_compile(
        compile,
        steps=epochs * len(streams.schedule()),
        capture_after=capture_after,
        distributed=bool(distributed),
    )
    tracker = None
    if track_log_marginal is not None:
        tracker = LogMarginalTracker(
            track_log_marginal,
            track_every,
            eval_max_points,
            seed or 0,
            capture=CapturedLogWeights(matmul=matmul),
        )
        if val is None:
            raise InputError("track_log_marginal needs held-out data: pass validation=...")
    loss = loss if loss is not None else MeanFieldELBO()
    if capture_after is not None:
        check_positive_int(capture_after, "capture_after")
    objectives = [(model, guide, loss, "program")] + [
        (a.model, a.guide, a.loss if a.loss is not None else Trace_ELBO(), f"auxiliary objective '{a.name}'")
        for a in auxiliary
    ]
    losses = [o[2] for o in objectives]
    make_optimizer = optimizer if optimizer is not None else partial(default_optimizer, lr=lr)
    device = streams.tensors[0][0].device
    devices = [device] if device.type == "cuda" else []
    options = as_options(distributed)

    store = pyro.get_param_store()
    with (
        store.scope() as param_state,
        torch.random.fork_rng(devices=devices),
        maybe_process_group(options, device),
    ):
        group = start((model, guide), seed) if options is not None else None
        if group is not None:
            group.check_batches(
                streams.batch_sizes, [streams.minibatch(s) for s in range(len(streams.sizes))], streams.names
            )
        bound, scaling = _bind(objectives, auxiliary, streams, plate_name=plate_name, kl_warmup=kl_warmup)
        step = step_loss(
            loss, capture_after=capture_after, matmul=matmul, compile=compile, compile_after=compile_after
        )
        bound = [[replace(b, loss=step) if i == 0 else b for i, b in enumerate(on)] for on in bound]
        _register(bound, streams, kl_warmup)
        metrics = plan_metrics(
            model,
            guide,
            streams,
            plate_name=plate_name,
            particles=eval_particles,
            batch_size=eval_batch_size,
            max_points=eval_max_points,
            validation=val,
        )
        if tracker is not None and metrics.unavailable:
            raise InputError(f"track_log_marginal needs per-datapoint bounds: {metrics.unavailable}")
        params = _store_params()
        if not params:
            raise InputError("model and guide have no parameters to fit (no pyro.param or pyro.module)")
        opt = make_optimizer(list(params.values()))
        if resume:
            state = _resume(checkpoint, bound, streams, params, opt, losses, devices)  # type: ignore[arg-type]
        else:
            state = TrainState()
            if seed is not None:
                torch.manual_seed(seed)
        if group is not None:  # all ranks start equal, each with its own random numbers
            group.broadcast_state(params)
            if resume:
                group.restore_rng(load_checkpoint(checkpoint).get("rank_rng"), state.step)  # type: ignore[arg-type]
            else:
                group.seed_rank(state.step)
        _train(
            state,
            bound,
            streams,
            opt,
            params,
            losses,
            metrics=metrics,
            program=(model, guide, val),
            epochs=epochs,
            seed=seed,
            kl_warmup=kl_warmup,
            transform=transform,
            checkpoint=checkpoint,
            cuda=bool(devices),
            progress=progress,
            group=group,
            tracker=tracker,
        )
    return FitResult(
        history=state.history,
        param_state=param_state,
        num_steps=state.step,
        scaling=scaling,
        metrics=metrics.unavailable,
        captured_steps=step.captured_steps if isinstance(step, CapturedLoss) else 0,
        eager_reason=_eager_reason(step, loss, capture_after),
        matmul=step.kernels if isinstance(step, CapturedLoss) else "aten",
        compiled=isinstance(step, CapturedLoss) and step.compiled,
    )


def _eager_reason(step: Any, loss: Any, capture_after: int | None) -> str:
    if capture_after is None:
        return "capture_after=None"
    if not isinstance(step, CapturedLoss):
        return capturable(loss)
    return step.fallback_reason
