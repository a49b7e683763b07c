"""The comparison's report: one row per estimator and parameter group, as a table, CSV,
JSON and figures."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pyro_vae._io import atomic_write_json, atomic_write_text
from pyro_vae._stats import mean_and_se
from pyro_vae.comparison.gradients import GradientSummary

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

    :ivar gradients: :class:`~pyro_vae.comparison.gradients.GradientSummary` per parameter
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

    :ivar exact: what the biases are measured against: ``"exact gradients by enumeration"``
        only when every latent is enumerated; a Monte Carlo reference says so (and its error
        is in every bias SE); otherwise why (some) are missing.
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
