"""Stochastic variational inference for any Pyro model/guide pair."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from pyro_vae._checks import check_matrix, check_positive, check_positive_int
from pyro_vae.errors import InputError, NonFiniteLossError
from pyro_vae.infer.mean_field_elbo import MeanFieldELBO
from pyro_vae.train.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from pyro_vae.train.evaluation import rate_distortion
from pyro_vae.train.schedules import KLWarmup
from pyro_vae.train.step import train_step

Data = torch.Tensor | Sequence[torch.Tensor]
OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    :ivar history: one dict per epoch (``epoch``, ``step``, ``kl_weight``,
        ``train_objective``, ``train_elbo``, ``train_rate``, ``train_distortion``,
        ``val_elbo``, ``val_rate``, ``val_distortion``, ``seconds``), all per datapoint in
        nats; ``val_*`` are NaN without validation data, rate/distortion NaN when the
        program has no data plate.
    :ivar param_state: the private parameter store the program was trained in, as
        ``{"params": ..., "constraints": ...}``. Programs built from ``nn.Module`` s
        registered with ``pyro.module`` hold their trained weights themselves; programs
        using bare ``pyro.param`` s read them inside
        ``pyro.get_param_store().scope(result.param_state)``.
    """

    history: list[dict[str, float]]
    param_state: dict[str, dict[str, Any]] = field(repr=False)
    num_steps: int

    def last(self, key: str) -> float:
        return self.history[-1][key] if self.history else math.nan


def _as_tuple(data: Data, name: str) -> tuple[torch.Tensor, ...]:
    tensors = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise InputError(f"{name} must be a tensor or a tuple of tensors (x, y, ...)")
    check_matrix(tensors[0], name=name)
    n = tensors[0].shape[0]
    for i, t in enumerate(tensors[1:], 1):
        if t.shape[0] != n:
            raise InputError(f"{name}: tensor {i} has {t.shape[0]} rows but x has {n}")
    return tensors


def _accepts(fn: Callable, keyword: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _permutation(n: int, seed: int | None, epoch: int) -> torch.Tensor:
    gen = torch.Generator()
    gen.manual_seed((seed if seed is not None else torch.initial_seed()) * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def _store_params() -> dict[str, torch.Tensor]:
    return dict(pyro.get_param_store().named_parameters())


def _epoch_metrics(
    prefix: str,
    model: Callable,
    guide: Callable,
    data: tuple[torch.Tensor, ...] | None,
    *,
    plate_name: str | None,
    batch_size: int,
    num_particles: int,
) -> dict[str, float]:
    nan = {f"{prefix}_{k}": math.nan for k in ("elbo", "rate", "distortion")}
    if data is None or plate_name is None:
        return nan
    rd = rate_distortion(
        model, guide, data, batch_size=batch_size, num_particles=num_particles, plate_name=plate_name
    )
    return {
        f"{prefix}_elbo": rd.elbo.mean().item(),
        f"{prefix}_rate": rd.rate.mean().item(),
        f"{prefix}_distortion": rd.distortion.mean().item(),
    }


def fit(
    model: Callable,
    guide: Callable,
    data: Data,
    *,
    validation: Data | None = None,
    loss: Any = None,
    optimizer: OptimizerFactory | None = None,
    lr: float = 1e-3,
    epochs: int = 10,
    batch_size: int | None = 128,
    seed: int | None = 0,
    kl_warmup: KLWarmup | None = None,
    transform: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    plate_name: str | None = "data",
    eval_particles: int = 1,
    eval_max_points: int = 2000,
    eval_batch_size: int = 1024,
    progress: bool = True,
) -> FitResult:
    """Fit ``model``/``guide`` to ``data`` by stochastic variational inference [1].

    Each step draws a minibatch of ``batch_size`` rows (a fresh permutation per epoch)
    and calls ``model(*batch, num_data=N)`` and ``guide(*batch, num_data=N)``; a program
    that puts its observations in ``pyro.plate("data", num_data, subsample=...)`` is
    then scaled by :math:`N/B` and the minibatch objective is an unbiased estimate of
    the full-data one. With ``batch_size=None`` (or :math:`\\ge N`) every step uses all
    the data and ``num_data`` is not passed, so any program works.

    Any Pyro ELBO works as ``loss`` (``Trace_ELBO``, ``TraceGraph_ELBO``,
    ``TraceEnum_ELBO``, ...); the default is :class:`~pyro_vae.infer.MeanFieldELBO`
    (Pyro's ``TraceMeanField_ELBO`` estimator, analytic KL, for reparameterized guides).

    Isolation: the program is trained in a private, initially empty Pyro parameter
    store, so parameters of one model never leak into (or are clobbered by) another's;
    the global store is left exactly as it was. See :class:`FitResult` for where the
    trained parameters are.

    Determinism and resumption: with a ``seed`` the run is reproducible. With a
    ``checkpoint`` path the full training state (parameters, optimizer, RNG, history)
    is written atomically after every epoch; ``resume=True`` continues from it and ends
    with the same parameters as an uninterrupted run. A loss with state of its own (the
    baselines and temperature schedules of :mod:`pyro_vae.estimators`) exposes
    ``state_dict``/``load_state_dict``, and that state is checkpointed too.

    :param data: ``x`` or a tuple ``(x, y, ...)`` of tensors with one row per datapoint.
    :param validation: held-out data in the same form.
    :param optimizer: ``params -> torch.optim.Optimizer``; default Adam at ``lr``.
    :param kl_warmup: passes ``kl_weight=w`` to model and guide every step.
    :param transform: applied to each training minibatch (e.g. dynamic binarization).
    :param plate_name: the data plate, for per-datapoint ELBO/rate/distortion metrics;
        ``None`` for programs without one (metrics then come from ``loss.loss``).
    :param eval_max_points: training rows used for the per-epoch training metrics.
    :raises InputError: bad data or options, before anything runs.
    :raises NonFiniteLossError: a NaN/inf loss; parameters are not updated with it and the
        last checkpoint is left intact.

    References:
        [1] Hoffman, Blei, Wang & Paisley (2013), "Stochastic variational inference", JMLR 14.
    """
    train = _as_tuple(data, "data")
    val = _as_tuple(validation, "validation data") if validation is not None else None
    if val is not None and val[0].shape[1:] != train[0].shape[1:]:
        raise InputError(f"validation data has {val[0].shape[1]} features but data has {train[0].shape[1]}")
    check_positive_int(epochs, "epochs", minimum=0)
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    check_positive(lr, "learning rate")
    check_positive_int(eval_particles, "eval_particles")
    if resume and checkpoint is None:
        raise InputError("resume=True needs a checkpoint path")
    n = train[0].shape[0]
    minibatch = batch_size is not None and batch_size < n
    step_size = batch_size if minibatch else n
    base_kwargs: dict[str, Any] = {"num_data": n} if minibatch else {}
    for program, what in ((model, "model"), (guide, "guide")):
        if minibatch and not _accepts(program, "num_data"):
            raise InputError(
                f"the {what} does not accept the keyword 'num_data', which minibatch training "
                "passes to scale the data plate; add it, or train full-batch with batch_size=None"
            )
        if kl_warmup is not None and not _accepts(program, "kl_weight"):
            raise InputError(f"KL warm-up passes kl_weight= to the {what}, which does not accept it")
    loss = loss if loss is not None else MeanFieldELBO()
    make_optimizer = optimizer if optimizer is not None else partial(torch.optim.Adam, lr=lr)
    eval_train = tuple(t[:eval_max_points] for t in train)
    metric_kwargs = {"plate_name": plate_name, "batch_size": eval_batch_size, "num_particles": eval_particles}
    devices = [train[0].device] if train[0].device.type == "cuda" else []

    store = pyro.get_param_store()
    with store.scope() as param_state, torch.random.fork_rng(devices=devices):
        # Register every parameter with one validated trace before training, so that shape
        # errors surface now, with Pyro's messages, and the optimizer sees all parameters.
        first = tuple(t[:step_size] for t in train)
        with pyro.validation_enabled(True), torch.no_grad():
            kw = {**base_kwargs, **({"kl_weight": kl_warmup(0.0)} if kl_warmup else {})}
            guide_trace = poutine.trace(guide).get_trace(*first, **kw)
            poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*first, **kw)
            if plate_name is not None:
                _epoch_metrics("check", model, guide, tuple(t[:2] for t in train), **metric_kwargs)
        params = _store_params()
        if not params:
            raise InputError("model and guide have no parameters to fit (no pyro.param or pyro.module)")
        opt = make_optimizer(list(params.values()))
        history: list[dict[str, float]] = []
        start_epoch, step = 0, 0
        if resume:
            state = load_checkpoint(checkpoint, map_location=train[0].device)
            if set(state["params"]) - set(params):
                # parameters the loss creates on its first step (a baseline network): create
                # them the same way, in a second parameter group as during training
                with torch.random.fork_rng(devices=devices):
                    loss.loss_and_grads(model, guide, *first, **base_kwargs)
                new = {k: v for k, v in _store_params().items() if k not in params}
                for p in _store_params().values():
                    p.grad = None
                if new:
                    opt.add_param_group({"params": list(new.values())})
                    params.update(new)
            check_compatible(state, params, checkpoint)
            with torch.no_grad():
                for name, value in state["params"].items():
                    params[name].copy_(value)
            opt.load_state_dict(state["optimizer"])
            if state.get("loss_state") is not None and hasattr(loss, "load_state_dict"):
                loss.load_state_dict(state["loss_state"])
            torch.set_rng_state(state["rng"])
            if devices and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            history = list(state["history"])
            start_epoch, step = int(state["epoch"]), int(state["step"])
        elif seed is not None:
            torch.manual_seed(seed)

        bar = tqdm(
            total=(epochs - start_epoch) * math.ceil(n / step_size),
            disable=not progress,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5,
        )
        with bar, pyro.validation_enabled(False):
            for epoch in range(start_epoch, epochs):
                tic = time.perf_counter()
                order = _permutation(n, seed, epoch).to(train[0].device)
                total = 0.0
                for i, begin in enumerate(range(0, n, step_size)):
                    idx = order[begin : begin + step_size]
                    batch = tuple(t[idx] for t in train)
                    if transform is not None:
                        batch = transform(batch)
                    kwargs = base_kwargs
                    if kl_warmup is not None:
                        kwargs = {**base_kwargs, "kl_weight": kl_warmup(epoch + begin / n)}
                    value = train_step(loss, opt, model, guide, batch, kwargs)
                    if not math.isfinite(value):
                        where = f"; the last checkpoint {checkpoint} is unchanged" if checkpoint else ""
                        raise NonFiniteLossError(
                            f"non-finite loss {value} at epoch {epoch + 1}, step {step + 1} "
                            f"(batch {i + 1}){where}; try a lower learning rate",
                            epoch=epoch,
                            step=step,
                        )
                    if len(pyro.get_param_store()) != len(params):  # parameters created lazily
                        new = {k: v for k, v in _store_params().items() if k not in params}
                        opt.add_param_group({"params": list(new.values())})
                        params.update(new)
                    total += value
                    step += 1
                    bar.update()
                    if step % 20 == 0:
                        bar.set_postfix(epoch=epoch + 1, elbo=f"{-value / n:.3f}", refresh=False)
                record: dict[str, float] = {
                    "epoch": epoch + 1,
                    "step": step,
                    "kl_weight": kl_warmup(epoch + 1) if kl_warmup else 1.0,
                    "train_objective": -total / (i + 1) / n,
                }
                record |= _epoch_metrics("train", model, guide, eval_train, **metric_kwargs)
                record |= _epoch_metrics("val", model, guide, val, **metric_kwargs)
                if val is not None and plate_name is None:
                    with torch.no_grad():
                        record["val_elbo"] = -loss.loss(model, guide, *val) / val[0].shape[0]
                record["seconds"] = time.perf_counter() - tic
                history.append(record)
                bar.set_postfix(epoch=epoch + 1, val_elbo=f"{record['val_elbo']:.3f}", refresh=False)
                if checkpoint is not None:
                    save_checkpoint(
                        checkpoint,
                        {
                            "epoch": epoch + 1,
                            "step": step,
                            "params": {k: v.detach().clone() for k, v in _store_params().items()},
                            "optimizer": opt.state_dict(),
                            "rng": torch.get_rng_state(),
                            "cuda_rng": torch.cuda.get_rng_state_all() if devices else None,
                            "history": history,
                            "loss_state": loss.state_dict() if hasattr(loss, "state_dict") else None,
                        },
                    )
    return FitResult(history=history, param_state=param_state, num_steps=step)
