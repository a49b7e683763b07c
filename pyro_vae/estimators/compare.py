"""Compare gradient estimators on one model: bias, variance, SNR, cost, and training curves."""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae._checks import check_positive, check_positive_int
from pyro_vae._io import atomic_write_json, atomic_write_text
from pyro_vae._stats import mean_and_se
from pyro_vae.bounds import elbo as elbo_bound
from pyro_vae.bounds import iwae
from pyro_vae.errors import InputError
from pyro_vae.estimators.enumeration import DEFAULT_MAX_CONFIGURATIONS
from pyro_vae.estimators.gradients import (
    GROUPS,
    GradientMoments,
    GradientSummary,
    exact_gradient,
    gradient_samples,
    parameter_groups,
    summarize_gradients,
)
from pyro_vae.estimators.registry import Estimator, get_estimator
from pyro_vae.train import fit
from pyro_vae.train.fit import _as_tuple

COLUMNS = (
    "estimator",
    "group",
    "point",
    "objective",
    "unbiased",
    "bias",
    "bias_se",
    "relative_bias",
    "variance",
    "snr",
    "snr_median",
    "mean_norm",
    "num_parameters",
    "ms_per_step",
    "val_elbo",
    "val_elbo_se",
    "val_iwae",
    "val_iwae_se",
    "val_elbo_vs_first",
    "val_elbo_vs_first_se",
    "train_seconds",
)


@dataclass(frozen=True)
class EstimatorResult:
    """One estimator's row group in a :class:`Comparison`.

    :ivar gradients: :class:`~pyro_vae.estimators.gradients.GradientSummary` per parameter
        group (``"guide"``: encoder, ``"model"``: decoder), at the common initial parameters.
    :ivar trained_gradients: the same at the estimator's own trained parameters (empty
        unless asked for).
    :ivar ms_per_step: median wall time of one ``loss_and_grads`` on the gradient batch.
    :ivar history: :func:`~pyro_vae.train.fit`'s per-epoch records of the training run.
    :ivar val_elbo, val_iwae: held-out ELBO and :math:`\\mathcal L_K` per datapoint after
        training (NaN without validation data), with standard errors over datapoints.
    :ivar params: the trained parameters (unconstrained values by store name).
    :ivar val_elbo_points: the held-out ELBO of each datapoint (``None`` without validation
        data), for paired comparisons between estimators.
    """

    name: str
    description: str
    objective: str
    unbiased: bool
    gradients: dict[str, GradientSummary]
    ms_per_step: float
    history: list[dict[str, float]]
    val_elbo: float
    val_elbo_se: float
    val_iwae: float
    val_iwae_se: float
    train_seconds: float
    params: dict[str, torch.Tensor] = field(repr=False)
    val_elbo_points: torch.Tensor | None = field(default=None, repr=False)
    trained_gradients: dict[str, GradientSummary] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` returns: one :class:`EstimatorResult` per estimator.

    :ivar exact: ``"exact gradients by enumeration"`` when biases are against exact
        gradients, otherwise why (some) are missing.
    """

    results: list[EstimatorResult]
    exact: str
    num_gradient_samples: int
    gradient_batch_size: int
    eval_particles: int

    def rows(self) -> list[dict[str, Any]]:
        """The tidy table: one row per estimator and parameter group (:data:`COLUMNS`).

        ``val_elbo_vs_first`` is the held-out ELBO minus that of the first estimator, averaged
        over the same datapoints, with its paired standard error: differences between
        estimators are much more precise than the ELBOs themselves.
        """
        out = []
        first = self.results[0].val_elbo_points if self.results else None
        for r in self.results:
            diff = (math.nan, math.nan)
            if first is not None and r.val_elbo_points is not None:
                diff = mean_and_se(r.val_elbo_points - first)
            points = [("initial", r.gradients), ("trained", r.trained_gradients)]
            for point, group, g in [(p, k, v) for p, gs in points for k, v in gs.items()]:
                out.append(
                    {
                        "estimator": r.name,
                        "group": group,
                        "point": point,
                        "objective": r.objective,
                        "unbiased": r.unbiased,
                        **{k: v for k, v in asdict(g).items() if k != "num_samples"},
                        "ms_per_step": r.ms_per_step,
                        "val_elbo": r.val_elbo,
                        "val_elbo_se": r.val_elbo_se,
                        "val_iwae": r.val_iwae,
                        "val_iwae_se": r.val_iwae_se,
                        "val_elbo_vs_first": diff[0],
                        "val_elbo_vs_first_se": diff[1],
                        "train_seconds": r.train_seconds,
                    }
                )
        return out

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return buf.getvalue()

    def to_json(self) -> dict[str, Any]:
        return {
            "exact": self.exact,
            "num_gradient_samples": self.num_gradient_samples,
            "gradient_batch_size": self.gradient_batch_size,
            "eval_particles": self.eval_particles,
            "rows": self.rows(),
            "histories": {r.name: r.history for r in self.results},
        }

    def format(self) -> str:
        """The table as text: bias (where exact), variance, SNR (norm-based and per-coordinate
        median), ms/step, held-out bounds."""
        k = self.eval_particles
        head = (
            f"{'estimator':<11} {'group':<6} {'params':<8} {'objective':<9} {'bias':>10} {'bias SE':>9} "
            f"{'variance':>10} {'SNR':>7} {'SNR med':>7} {'ms/step':>8} {'val ELBO':>16} {f'val L_{k}':>16} "
            f"{'ELBO vs first':>16}"
        )
        lines = [
            f"gradients: {self.num_gradient_samples} estimates on a batch of {self.gradient_batch_size}; "
            f"bias against: {self.exact}",
            head,
            "-" * len(head),
        ]
        for row in self.rows():
            bias = "n/a" if math.isnan(row["bias"]) else f"{row['bias']:.3g}"
            bias_se = "" if math.isnan(row["bias_se"]) else f"{row['bias_se']:.2g}"
            val_elbo = _pm(row["val_elbo"], row["val_elbo_se"])
            val_iwae = _pm(row["val_iwae"], row["val_iwae_se"])
            vs_first = _pm(row["val_elbo_vs_first"], row["val_elbo_vs_first_se"])
            lines.append(
                f"{row['estimator']:<11} {row['group']:<6} {row['point']:<8} {row['objective']:<9} "
                f"{bias:>10} {bias_se:>9} "
                f"{row['variance']:>10.3g} {row['snr']:>7.3f} {row['snr_median']:>7.3f} "
                f"{row['ms_per_step']:>8.2f} "
                f"{val_elbo:>16} {val_iwae:>16} {vs_first:>16}"
            )
        return "\n".join(lines)

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``comparison.csv``, ``comparison.json``, ``gradient_variance.png`` and
        ``training_curves.png`` into ``directory`` (each atomically)."""
        from pyro_vae.plotting import plot_estimator_curves, plot_gradient_variance

        directory = Path(directory)
        rows = self.rows()
        paths = {
            "csv": atomic_write_text(directory / "comparison.csv", self.to_csv()),
            "json": atomic_write_json(directory / "comparison.json", self.to_json()),
            "variance": plot_gradient_variance(rows, directory / "gradient_variance.png"),
            "curves": plot_estimator_curves(
                {r.name: r.history for r in self.results}, directory / "training_curves.png"
            ),
        }
        if any(r["point"] == "trained" for r in rows):
            paths["variance_trained"] = plot_gradient_variance(
                rows, directory / "gradient_variance_trained.png", point="trained"
            )
        return paths


def _pm(mean: float, se: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(se) else f"{mean:.3f} ± {se:.3f}"


def _snapshot() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def _restore(snapshot: dict[str, torch.Tensor]) -> None:
    """Reset the program's parameters and drop any an estimator added (baseline networks),
    so that the next estimator registers its own."""
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n not in snapshot]:
        del store[name]
    params = dict(store.named_parameters())
    with torch.no_grad():
        for name, value in snapshot.items():
            params[name].copy_(value)


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


def _exact_gradients(
    model: Callable,
    guide: Callable,
    batch: tuple[torch.Tensor, ...],
    groups: dict[str, dict[str, torch.Tensor]],
    ks: set[int],
    max_configurations: int,
) -> tuple[dict[int, dict[str, torch.Tensor]], str]:
    """Exact gradients of the ELBO and of each L_K by enumeration, where tractable."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    problems = []
    for k in sorted(ks | {1}):
        try:
            out[k] = exact_gradient(
                model, guide, *batch, groups=groups, num_particles=k, max_configurations=max_configurations
            )
        except InputError as e:
            problems.append(f"{'ELBO' if k == 1 else f'L_{k}'}: {e}")
            if k == 1:
                break
    return out, "exact gradients by enumeration" if not problems else "; ".join(problems)


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
    target: dict[str, torch.Tensor] | None,
    restart_schedule: bool = True,
) -> tuple[dict[str, GradientSummary], float]:
    """Warm up the loss's own state (baseline parameters, running averages) with the
    program's parameters fixed, then summarize ``num_samples`` gradient estimates per group,
    with their bias against ``target`` if given (temperature schedules restarted at their
    first step, unless ``restart_schedule`` is off). Also returns the median ms per estimate."""
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
    if restart_schedule and hasattr(loss, "step"):
        loss.step = 0  # temperature schedules are measured at their start
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
        g: summarize_gradients(moments[g], target[g] if target is not None else None)
        for g in GROUPS
        if groups[g]
    }
    return summaries, 1000 * statistics.median(times)


def _trained_gradients(
    model: Callable,
    guide: Callable,
    batch: tuple[torch.Tensor, ...],
    loss: Any,
    spec: Estimator,
    *,
    exact_possible: bool,
    num_samples: int,
    max_configurations: int,
    seed: int,
) -> dict[str, GradientSummary]:
    """Gradient statistics at the current (trained) parameters with the training loss."""
    groups = parameter_groups(model, guide, *batch)
    target = None
    if exact_possible:
        target = exact_gradient(
            model,
            guide,
            *batch,
            groups=groups,
            num_particles=spec.objective_particles,
            max_configurations=max_configurations,
        )
    torch.manual_seed(seed)
    summaries, _ = _measure(
        model,
        guide,
        batch,
        groups,
        loss,
        num_samples=num_samples,
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
    num_gradient_samples: int = 100,
    gradient_batch_size: int = 100,
    warmup_steps: int = 100,
    epochs: int = 10,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    eval_particles: int = 100,
    max_configurations: int = DEFAULT_MAX_CONFIGURATIONS,
    trained_gradients: bool = False,
    progress: bool = True,
) -> Comparison:
    """Compare gradient estimators on any model/guide pair with discrete latents.

    For each estimator (an :class:`~pyro_vae.estimators.registry.Estimator` or a name of
    :data:`~pyro_vae.estimators.registry.ESTIMATORS`), starting from the *same* initial
    parameters:

    1. **Gradient statistics** at the initial parameters on a fixed batch (the first
       ``gradient_batch_size`` rows): after ``warmup_steps`` updates of the estimator's own
       state only (baseline networks and averages; the program's parameters stay fixed),
       ``num_gradient_samples`` independent estimates :math:`\\hat g` of the gradient of the
       batch objective give, per parameter group (guide = encoder, model = decoder), the
       variance :math:`\\sum_i \\mathrm{Var}(\\hat g_i)`, the SNR
       :math:`\\lVert E\\hat g \\rVert / \\sqrt{\\sum_i \\mathrm{Var}\\,\\hat g_i}` and, when the
       discrete code is small enough to enumerate (at most ``max_configurations`` values
       per datapoint), the bias :math:`\\lVert E\\hat g - g \\rVert` against the exact gradient
       :math:`g` of the ELBO (or of :math:`\\mathcal L_K` for VIMCO), with its Monte Carlo
       standard error; and the median wall time of one estimate.
    2. **Training**: :func:`~pyro_vae.train.fit` with the estimator as the loss, the same
       data, seed, optimizer and budget (``epochs`` of ``batch_size``), recording the
       held-out ELBO per epoch and, at the end, the held-out ELBO and
       :math:`\\mathcal L_{\\text{eval\\_particles}}` per datapoint.
    3. With ``trained_gradients``, the gradient statistics again at the estimator's own
       trained parameters, with the loss as training left it (trained baseline, final
       temperature), against the exact gradient there where it is tractable.

    Everything runs in a private parameter store and forked RNG, and the program's
    parameters are restored to their initial values at the end: the caller's state is
    unchanged. The trained parameters of each estimator are in the result.

    :param data: ``x`` or a tuple ``(x, y, ...)`` as the program takes them (rows are datapoints).
    """
    train = _as_tuple(data, "data")
    val = _as_tuple(validation, "validation data") if validation is not None else None
    specs = [get_estimator(e) if isinstance(e, str) else e for e in estimators]
    if not specs:
        raise InputError("compare needs at least one estimator")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError(f"estimator names must be distinct, got {names}")
    check_positive_int(num_gradient_samples, "num_gradient_samples", minimum=2)
    check_positive_int(gradient_batch_size, "gradient_batch_size")
    check_positive_int(warmup_steps, "warmup_steps", minimum=0)
    check_positive_int(epochs, "epochs", minimum=0)
    check_positive_int(batch_size, "batch_size")
    check_positive_int(eval_particles, "eval_particles")
    check_positive(lr, "learning rate")
    batch = tuple(t[:gradient_batch_size] for t in train)
    devices = [train[0].device] if train[0].device.type == "cuda" else []

    store = pyro.get_param_store()
    results = []
    with store.scope(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        groups = parameter_groups(model, guide, *batch)
        if not any(groups.values()):
            raise InputError("model and guide have no parameters to compare gradients of")
        initial = _snapshot()
        _preflight(model, guide, batch, specs)
        _restore(initial)
        exact, exact_reason = _exact_gradients(
            model, guide, batch, groups, {s.objective_particles for s in specs}, max_configurations
        )
        bar = tqdm(specs, desc="compare", disable=not progress, dynamic_ncols=True)
        try:
            for spec in bar:
                bar.set_postfix(estimator=spec.name, refresh=True)
                _restore(initial)
                torch.manual_seed(seed)
                gradients, ms = _measure(
                    model,
                    guide,
                    batch,
                    groups,
                    spec.make_loss(),
                    num_samples=num_gradient_samples,
                    warmup_steps=warmup_steps,
                    lr=lr,
                    target=exact.get(spec.objective_particles),
                )
                _restore(initial)
                torch.manual_seed(seed)
                fit_loss = spec.make_loss()
                tic = time.perf_counter()
                result = fit(
                    model,
                    guide,
                    train,
                    validation=val,
                    loss=fit_loss,
                    epochs=epochs,
                    batch_size=batch_size,
                    lr=lr,
                    seed=seed,
                    progress=False,
                )
                seconds = time.perf_counter() - tic
                at_trained: dict[str, GradientSummary] = {}
                if trained_gradients:
                    with store.scope(result.param_state):
                        at_trained = _trained_gradients(
                            model,
                            guide,
                            batch,
                            fit_loss,
                            spec,
                            exact_possible=spec.objective_particles in exact,
                            num_samples=num_gradient_samples,
                            max_configurations=max_configurations,
                            seed=seed,
                        )
                elbo = iwae_mean = (math.nan, math.nan)
                points = None
                if val is not None:
                    with store.scope(result.param_state):
                        points = elbo_bound(model, guide, *val, num_particles=eval_particles).detach()
                        elbo = mean_and_se(points)
                        iwae_mean = mean_and_se(iwae(model, guide, *val, num_particles=eval_particles))
                trained = {k: v.detach().clone() for k, v in result.param_state["params"].items()}
                results.append(
                    EstimatorResult(
                        name=spec.name,
                        description=spec.description,
                        objective="ELBO"
                        if spec.objective_particles == 1
                        else f"L_{spec.objective_particles}",
                        unbiased=spec.unbiased,
                        gradients=gradients,
                        ms_per_step=ms,
                        history=result.history,
                        val_elbo=elbo[0],
                        val_elbo_se=elbo[1],
                        val_iwae=iwae_mean[0],
                        val_iwae_se=iwae_mean[1],
                        train_seconds=seconds,
                        params=trained,
                        val_elbo_points=points,
                        trained_gradients=at_trained,
                    )
                )
        finally:
            _restore(initial)
    return Comparison(
        results=results,
        exact=exact_reason,
        num_gradient_samples=num_gradient_samples,
        gradient_batch_size=batch[0].shape[0],
        eval_particles=eval_particles,
    )
