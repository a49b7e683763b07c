"""Comparing gradient estimators on any model/guide pair: bias against a reference gradient
(exact where every latent is enumerated, Monte Carlo and labelled so otherwise), variance,
SNR, cost and training curves."""

from pyro_vae.comparison.gradients import (
    GradientSummary,
    Reference,
    exact_gradient,
    gradient_samples,
    parameter_groups,
    reference_gradient,
)
from pyro_vae.comparison.harness import Settings, compare
from pyro_vae.comparison.report import COLUMNS, Comparison, EstimatorResult

__all__ = [
    "COLUMNS",
    "Comparison",
    "EstimatorResult",
    "GradientSummary",
    "Reference",
    "Settings",
    "compare",
    "exact_gradient",
    "gradient_samples",
    "parameter_groups",
    "reference_gradient",
]
