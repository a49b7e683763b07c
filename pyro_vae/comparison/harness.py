"""Compare gradient estimators on one model: bias, variance, SNR, cost, and training curves."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae._checks import as_tensors, check_positive, check_positive_int
from pyro_vae._stats import mean_and_se
from pyro_vae.bounds import elbo as elbo_bound
from pyro_vae.bounds import iwae
from pyro_vae.comparison.gradients import (
    GROUPS,
    GradientMoments,
    GradientSummary,
    Reference,
    gradient_samples,
    parameter_groups,
    reference_gradient,
    summarize_gradients,
)
from pyro_vae.comparison.report import Comparison, EstimatorResult
from pyro_vae.errors import InputError
from pyro_vae.estimators.enumeration import DEFAULT_MAX_CONFIGURATIONS
from pyro_vae.estimators.registry import Estimator, get_estimator
from pyro_vae.estimators.relaxed import RelaxedELBO
from pyro_vae.infer.modes import BufferSnapshot
from pyro_vae.infer.per_datapoint import rows_of
from pyro_vae.train import fit


@dataclass(frozen=True)
class _Initial:
    """The program's state at the start: its parameters (from the store) and its modules'
    buffers (BatchNorm statistics), so that every estimator starts from the same place."""

    params: dict[str, torch.Tensor]
    buffers: BufferSnapshot


def _snapshot(buffers: BufferSnapshot) -> _Initial:
    return _Initial({k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}, buffers)


def _restore(initial: _Initial) -> None:
    """Reset the program's parameters and buffers and drop any parameters an estimator added
    (baseline networks), so that the next estimator registers its own."""
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n not in initial.params]:
        del store[name]
    params = dict(store.named_parameters())
    with torch.no_grad():
        for name, value in initial.params.items():
            params[name].copy_(value)
    initial.buffers.restore()


def _preflight(
    model: Callable, guide: Callable, batch: tuple[torch.Tensor, ...], specs: list[Estimator]
) -> None:
    """One loss evaluation per estimator, so that an estimator that does not apply to the
    program (ARM on a categorical code, enumeration of a large code) fails before any work."""
    for spec in specs:
        try:
            with torch.no_grad():
                spec.make_loss().loss(model, guide, *batch)
        except InputError as e:
            raise InputError(f"estimator '{spec.name}' does not apply to this program: {e}") from None


def _measure(
    model: Callable,
    guide: Callable,
    batch: tuple[torch.Tensor, ...],
    groups: dict[str, dict[str, torch.Tensor]],
    loss: Any,
    *,
    num_samples: int,
    warmup_steps: int,
    lr: float,
    target: Reference | None,
    restart_schedule: bool = True,
) -> tuple[dict[str, GradientSummary], float]:
    """Warm up the loss's own state (baseline parameters, running averages) with the
    program's parameters fixed, then summarize ``num_samples`` gradient estimates per group,
    with their bias against the reference ``target`` if given (temperature schedules
    restarted at their first step, unless ``restart_schedule`` is off). Also returns the
    median ms per estimate."""
    program = {id(p) for g in groups.values() for p in g.values()}
    if warmup_steps:
        loss.loss_and_grads(model, guide, *batch)
        own = [p for _, p in pyro.get_param_store().named_parameters() if id(p) not in program]
        opt = torch.optim.Adam(own, lr=lr) if own else None
        for _ in range(warmup_steps - 1):
            for _, p in pyro.get_param_store().named_parameters():
                p.grad = None
            loss.loss_and_grads(model, guide, *batch)
            if opt is not None:
                opt.step()
    if restart_schedule and isinstance(loss, RelaxedELBO):
        loss.reset()  # temperature schedules are measured at their start
    moments = {g: GradientMoments() for g in groups}
    times = []
    samples = gradient_samples(model, guide, *batch, loss=loss, num_samples=num_samples, groups=groups)
    while True:
        tic = time.perf_counter()
        sample = next(samples, None)
        if sample is None:
            break
        times.append(time.perf_counter() - tic)
        for g, v in sample.items():
            moments[g].update(v)
    summaries = {
        g: summarize_gradients(
            moments[g],
            target.gradient[g] if target is not None else None,
            target.variance[g] if target is not None else None,
        )
        for g in GROUPS
        if groups[g]
    }
    return summaries, 1000 * statistics.median(times)


def _reference(
    model: Callable,
    guide: Callable,
    batch: tuple[torch.Tensor, ...],
    groups: dict[str, dict[str, torch.Tensor]],
    k: int,
    settings: Settings,
) -> Reference:
    return reference_gradient(
        model,
        guide,
        *batch,
        groups=groups,
        num_particles=k,
        max_configurations=settings.max_configurations,
        draws=settings.reference_draws,
        repeats=settings.reference_repeats,
    )


def _references(
    model: Callable,
    guide: Callable,
    batch: tuple[torch.Tensor, ...],
    groups: dict[str, dict[str, torch.Tensor]],
    ks: set[int],
    settings: Settings,
) -> tuple[dict[int, Reference], str]:
    """The reference gradient of the ELBO and of each L_K, where enumeration can give one,
    and the label saying what it is (or why it is missing)."""
    out: dict[int, Reference] = {}
    problems = []
    for k in sorted(ks | {1}):
        try:
            out[k] = _reference(model, guide, batch, groups, k, settings)
        except InputError as e:
            problems.append(f"{'ELBO' if k == 1 else f'L_{k}'}: {e}")
            if k == 1:
                break
    labels = sorted({r.label for r in out.values()})
    return out, "; ".join(labels + problems)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The comparison's budget and options (see :func:`compare`)."""

    num_gradient_samples: int = 100
    gradient_batch_size: int = 100
    warmup_steps: int = 100
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    eval_particles: int = 100
    max_configurations: int = DEFAULT_MAX_CONFIGURATIONS
    reference_draws: int = 100
    reference_repeats: int = 20
    trained_gradients: bool = False

    def validate(self) -> None:
        check_positive_int(self.num_gradient_samples, "num_gradient_samples", minimum=2)
        for name in ("gradient_batch_size", "batch_size", "eval_particles", "reference_draws"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.reference_repeats, "reference_repeats", minimum=2)
        check_positive_int(self.warmup_steps, "warmup_steps", minimum=0)
        check_positive_int(self.epochs, "epochs", minimum=0)
        check_positive(self.lr, "learning rate")


@contextmanager
def _private_state(seed: int, data: torch.Tensor) -> Iterator[BufferSnapshot]:
    """A private parameter store, forked random number generators and a snapshot of the
    buffers of every module that runs: the caller's state is unchanged by the comparison."""
    devices = [data.device] if data.device.type == "cuda" else []
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=devices), BufferSnapshot() as buffers:
        torch.manual_seed(seed)
        yield buffers


def _held_out(
    model: Callable, guide: Callable, val: tuple[torch.Tensor, ...] | None, params: dict, particles: int
) -> tuple[tuple[float, float], tuple[float, float], torch.Tensor | None]:
    """Held-out ELBO and L_K (mean, SE) with the trained ``params``, and the per-point ELBO."""
    if val is None:
        return (math.nan, math.nan), (math.nan, math.nan), None
    with pyro.get_param_store().scope(params):
        points = elbo_bound(model, guide, *val, num_particles=particles).detach()
        bound = mean_and_se(iwae(model, guide, *val, num_particles=particles))
    return mean_and_se(points), bound, points


def _run_estimator(
    model: Callable,
    guide: Callable,
    spec: Estimator,
    data: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...]],
    groups: dict[str, dict[str, torch.Tensor]],
    initial: _Initial,
    references: dict[int, Reference],
    settings: Settings,
) -> EstimatorResult:
    """Gradient statistics at the initial parameters, training, held-out bounds and (if asked)
    gradient statistics at the trained parameters, for one estimator."""
    train, val, batch = data
    _restore(initial)
    torch.manual_seed(settings.seed)
    gradients, ms = _measure(
        model,
        guide,
        batch,
        groups,
        spec.make_loss(),
        num_samples=settings.num_gradient_samples,
        warmup_steps=settings.warmup_steps,
        lr=settings.lr,
        target=references.get(spec.objective_particles),
    )
    _restore(initial)
    torch.manual_seed(settings.seed)
    fit_loss = spec.make_loss()
    tic = time.perf_counter()
    result = fit(
        model,
        guide,
        train,
        validation=val,
        loss=fit_loss,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=settings.seed,
        progress=False,
    )
    seconds = time.perf_counter() - tic
    at_trained: dict[str, GradientSummary] = {}
    if settings.trained_gradients:
        with pyro.get_param_store().scope(result.param_state):
            at_trained = _trained_gradients(model, guide, batch, fit_loss, spec, references, settings)
    elbo, bound, points = _held_out(model, guide, val, result.param_state, settings.eval_particles)
    return EstimatorResult(
        name=spec.name,
        description=spec.description,
        objective="ELBO" if spec.objective_particles == 1 else f"L_{spec.objective_particles}",
        unbiased=spec.unbiased,
        gradients=gradients,
        ms_per_step=ms,
        history=result.history,
        val_elbo=elbo[0],
        val_elbo_se=elbo[1],
        val_iwae=bound[0],
        val_iwae_se=bound[1],
        train_seconds=seconds,
        params={k: v.detach().clone() for k, v in result.param_state["params"].items()},
        val_elbo_points=points,
        trained_gradients=at_trained,
    )


def _trained_gradients(
    model: Callable,
    guide: Callable,
    batch: tuple[torch.Tensor, ...],
    loss: Any,
    spec: Estimator,
    references: dict[int, Reference],
    settings: Settings,
) -> dict[str, GradientSummary]:
    """Gradient statistics at the current (trained) parameters with the training loss, against
    a reference of the same kind as at the initial parameters."""
    groups = parameter_groups(model, guide, *batch)
    target = None
    if spec.objective_particles in references:
        target = _reference(model, guide, batch, groups, spec.objective_particles, settings)
    torch.manual_seed(settings.seed)
    summaries, _ = _measure(
        model,
        guide,
        batch,
        groups,
        loss,
        num_samples=settings.num_gradient_samples,
        warmup_steps=0,
        lr=0.0,
        target=target,
        restart_schedule=False,
    )
    return summaries


def compare(
    model: Callable,
    guide: Callable,
    data: torch.Tensor | Sequence[torch.Tensor],
    estimators: Sequence[Estimator | str],
    *,
    validation: torch.Tensor | Sequence[torch.Tensor] | None = None,
    progress: bool = True,
    **options: Any,
) -> Comparison:
    """Compare gradient estimators on any model/guide pair with discrete latents.

    For each estimator (an :class:`~pyro_vae.estimators.registry.Estimator` or a name of
    :data:`~pyro_vae.estimators.registry.ESTIMATORS`), starting from the *same* initial
    parameters:

    1. **Gradient statistics** at the initial parameters on a fixed batch (the first
       ``gradient_batch_size`` rows): after ``warmup_steps`` updates of the estimator's own
       state only (baseline networks and averages; the program's parameters stay fixed),
       ``num_gradient_samples`` independent estimates :math:`\\hat g` of the gradient of the
       batch objective give, per parameter group (guide = every parameter :math:`\\log q`
       depends on, model = the rest), the variance :math:`\\sum_i \\mathrm{Var}(\\hat g_i)`, the
       SNR :math:`\\lVert E\\hat g \\rVert / \\sqrt{\\sum_i \\mathrm{Var}\\,\\hat g_i}` and the bias
       :math:`\\lVert E\\hat g - g \\rVert` against a reference :math:`g` with its standard
       error; and the median wall time of one estimate. The reference (of the ELBO, or of
       :math:`\\mathcal L_K` for VIMCO) is *exact* only when every latent of the guide is
       discrete and the code has at most ``max_configurations`` values per datapoint. When
       the guide also has reparameterized sites, the discrete part is enumerated and the rest
       averaged over ``reference_draws`` × ``reference_repeats`` draws per configuration: a
       Monte Carlo reference, labelled so, whose own error is folded into the bias SE.
    2. **Training**: :func:`~pyro_vae.train.fit` with the estimator as the loss, the same
       data, seed, optimizer and budget (``epochs`` of ``batch_size``), recording the
       held-out ELBO per epoch and, at the end, the held-out ELBO and
       :math:`\\mathcal L_{\\text{eval\\_particles}}` per datapoint.
    3. With ``trained_gradients``, the gradient statistics again at the estimator's own
       trained parameters, with the loss as training left it (trained baseline, final
       temperature).

    Everything runs in a private parameter store and forked RNG, and the program's
    parameters are restored to their initial values at the end: the caller's state is
    unchanged. The trained parameters of each estimator are in the result.

    :param data: ``x`` or a tuple ``(x, y, ...)`` as the program takes them (rows are datapoints).
    :param options: the fields of :class:`Settings` (keyword-only).
    """
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(
            f"compare got unknown options {unknown}; its options are {sorted(known)}. Keyword "
            "arguments of the program itself are bound beforehand, e.g. functools.partial(model, t=2.0)"
        )
    settings = Settings(**options)
    settings.validate()
    train = as_tensors(data, "data")
    val = as_tensors(validation, "validation data") if validation is not None else None
    specs = [get_estimator(e) if isinstance(e, str) else e for e in estimators]
    if not specs:
        raise InputError("compare needs at least one estimator")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError(f"estimator names must be distinct, got {names}")
    batch = rows_of(train, 0, settings.gradient_batch_size)
    results = []
    with _private_state(settings.seed, train[0]) as buffers:
        groups = parameter_groups(model, guide, *batch)
        if not any(groups.values()):
            raise InputError("model and guide have no parameters to compare gradients of")
        initial = _snapshot(buffers)
        _preflight(model, guide, batch, specs)
        _restore(initial)
        ks = {s.objective_particles for s in specs}
        references, label = _references(model, guide, batch, groups, ks, settings)
        bar = tqdm(specs, desc="compare", disable=not progress, dynamic_ncols=True)
        try:
            for spec in bar:
                bar.set_postfix(estimator=spec.name, refresh=True)
                results.append(
                    _run_estimator(
                        model, guide, spec, (train, val, batch), groups, initial, references, settings
                    )
                )
        finally:
            _restore(initial)
    return Comparison(
        results=results,
        exact=label,
        num_gradient_samples=settings.num_gradient_samples,
        gradient_batch_size=batch[0].shape[0],
        eval_particles=settings.eval_particles,
    )
