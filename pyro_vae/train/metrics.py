"""Per-epoch training metrics: the ELBO, rate and distortion per datapoint, for any program."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae.errors import InputError
from pyro_vae.infer.particles import ProgramPlan, forked_rng
from pyro_vae.infer.per_datapoint import log_terms, probe
from pyro_vae.train.evaluation import rate_distortion
from pyro_vae.train.streams import StreamData

NAMES = ("elbo", "rate", "distortion")


@dataclass(frozen=True)
class MetricsPlan:
    """What the per-epoch metrics evaluate: the first ``max_points`` rows of each training
    stream, and how.

    :ivar unavailable: why the program has no per-datapoint metrics (no data plate, global
        latents), ``""`` when it has them.
    :ivar plans: the program's probe on each training stream's rows and on the validation
        rows, kept for every epoch (a probe costs one more run of the program).
    :ivar joint: one training stream's rows and the validation rows, concatenated, with the
        program's probe on them, when the two can be evaluated as one set (the same tensors'
        dtypes, devices and trailing shapes): one evaluation an epoch instead of two, whose
        per-datapoint terms are split back (rows are independent given the data plate, and
        modules run in eval mode), for about half the Python of the metrics.
    """

    train: tuple[tuple[torch.Tensor, ...], ...]
    plate_name: str | None
    particles: int
    batch_size: int
    unavailable: str = ""
    plans: tuple[ProgramPlan, ...] = ()
    joint: tuple[tuple[torch.Tensor, ...], ProgramPlan] | None = None


def plan_metrics(
    model: Callable,
    guide: Callable,
    streams: StreamData,
    *,
    plate_name: str | None,
    particles: int,
    batch_size: int,
    max_points: int,
    validation: tuple | None = None,
) -> MetricsPlan:
    """The metrics plan, after one evaluation of the program on the rows the metrics will
    read (random number generators forked, modules in eval mode) to find whether it has
    per-datapoint terms there. A program that cannot be evaluated on them (no data plate,
    global sites, a guide with parameters per training row such as Pyro's ``AutoNormal``)
    trains all the same, with the reason in ``unavailable``."""
    train = tuple(streams.head(s, max_points) for s in range(len(streams.tensors)))
    checked: dict[int, ProgramPlan] = {}  # the probes of the first stream's and the validation rows
    unavailable = ""
    try:
        for i, rows in ((0, train[0]), *(((len(train), validation),) if validation is not None else ())):
            checked[i] = _probe(model, guide, rows, plate_name)
            with forked_rng(rows):
                log_terms(model, guide, *rows, plate_name=plate_name, plan=checked[i])
    except InputError as e:
        unavailable = str(e)
    except (ValueError, RuntimeError, IndexError) as e:  # the program's own error on these rows
        unavailable = f"the program cannot be evaluated on the metrics' rows ({type(e).__name__}: {e})"
    plans: tuple[ProgramPlan, ...] = ()
    if not unavailable:
        sets = (*train, *((validation,) if validation is not None else ()))
        plans = tuple(checked.get(i) or _probe(model, guide, rows, plate_name) for i, rows in enumerate(sets))
    joint = _joint(model, guide, train, validation, plate_name) if not unavailable else None
    return MetricsPlan(train, plate_name, particles, batch_size, unavailable, plans, joint)


def _joint(
    model: Callable, guide: Callable, train: tuple, validation: tuple | None, plate_name: str | None
) -> tuple[tuple[torch.Tensor, ...], ProgramPlan] | None:
    """One training stream's rows and the validation rows as one set, with its probe, when
    they can be concatenated and the program runs on them; else ``None``."""
    if validation is None or len(train) != 1 or len(train[0]) != len(validation):
        return None
    pairs = list(zip(train[0], validation, strict=True))
    if not all(
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.dim() > 0
        and a.shape[1:] == b.shape[1:]
        and a.dtype == b.dtype
        and a.device == b.device
        for a, b in pairs
    ):
        return None
    rows = tuple(torch.cat([a, b]) for a, b in pairs)
    try:
        plan = _probe(model, guide, rows, plate_name)
    except (InputError, ValueError, RuntimeError, IndexError):
        return None
    return rows, plan


def _probe(model: Callable, guide: Callable, rows: tuple, plate_name: str | None) -> ProgramPlan:
    with forked_rng(rows):
        return probe(model, guide, rows, {}, plate_name)


def _per_datapoint(
    plan: MetricsPlan, model: Callable, guide: Callable, data: tuple, index: int
) -> dict[str, float]:
    return _means(
        _rate_distortion(plan, model, guide, data, plan.plans[index] if index < len(plan.plans) else None)
    )


def _rate_distortion(
    plan: MetricsPlan, model: Callable, guide: Callable, data: tuple, program: ProgramPlan | None
) -> Any:
    return rate_distortion(
        model,
        guide,
        data,
        batch_size=plan.batch_size,
        num_particles=plan.particles,
        plate_name=plan.plate_name,
        plan=program,
    )


def _means(rd: Any, rows: slice = slice(None)) -> dict[str, float]:
    return {
        "elbo": rd.elbo[rows].mean().item(),
        "rate": rd.rate[rows].mean().item(),
        "distortion": rd.distortion[rows].mean().item(),
    }


def epoch_metrics(
    plan: MetricsPlan, model: Callable, guide: Callable, validation: tuple | None, loss: Any
) -> dict[str, float]:
    """``train_*`` (row-weighted over the streams) and ``val_*`` ELBO, rate and distortion per
    datapoint in nats. Without per-datapoint terms these are NaN, except ``val_elbo``, which
    is then the negated loss per datapoint. The random generators are forked
    (:func:`~pyro_vae.infer.particles.forked_rng`): the training's later draws are the same
    with the metrics as without, however they are evaluated."""
    with forked_rng((*(t for rows in plan.train for t in rows), *(validation or ()))):
        return _epoch_metrics(plan, model, guide, validation, loss)


def _epoch_metrics(
    plan: MetricsPlan, model: Callable, guide: Callable, validation: tuple | None, loss: Any
) -> dict[str, float]:
    out = {f"{split}_{k}": math.nan for split in ("train", "val") for k in NAMES}
    if plan.unavailable:
        if validation is not None:
            with torch.no_grad():
                out["val_elbo"] = -loss.loss(model, guide, *validation) / validation[0].shape[0]
        return out
    if plan.joint is not None and validation is not None:
        rows, program = plan.joint
        rd = _rate_distortion(plan, model, guide, rows, program)
        n = plan.train[0][0].shape[0]
        out |= {f"train_{k}": v for k, v in _means(rd, slice(None, n)).items()}
        return out | {f"val_{k}": v for k, v in _means(rd, slice(n, None)).items()}
    rows = [t[0].shape[0] for t in plan.train]
    parts = [_per_datapoint(plan, model, guide, data, i) for i, data in enumerate(plan.train)]
    for k in NAMES:
        out[f"train_{k}"] = sum(p[k] * r for p, r in zip(parts, rows, strict=True)) / sum(rows)
    if validation is not None:
        out |= {
            f"val_{k}": v for k, v in _per_datapoint(plan, model, guide, validation, len(plan.train)).items()
        }
    return out
