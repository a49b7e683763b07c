"""Gradient estimators for discrete latents, exact enumeration, and a harness to compare them."""

from pyro_vae.estimators.arm import ARM
from pyro_vae.estimators.baselines import Baseline, DecayingAverageBaseline, NeuralBaseline
from pyro_vae.estimators.compare import COLUMNS, Comparison, EstimatorResult, compare
from pyro_vae.estimators.enumeration import (
    EnumeratedTerms,
    EnumerationELBO,
    enumerate_terms,
    exact_elbo,
    exact_iwae,
)
from pyro_vae.estimators.gradients import GradientSummary, exact_gradient, gradient_samples, parameter_groups
from pyro_vae.estimators.registry import ESTIMATORS, Estimator, get_estimator
from pyro_vae.estimators.relaxed import RelaxedELBO, TemperatureSchedule, relaxed_sample
from pyro_vae.estimators.score_function import ScoreFunctionELBO
from pyro_vae.estimators.vimco import VIMCO, leave_one_out_bounds

__all__ = [
    "ARM",
    "COLUMNS",
    "ESTIMATORS",
    "VIMCO",
    "Baseline",
    "Comparison",
    "DecayingAverageBaseline",
    "EnumeratedTerms",
    "EnumerationELBO",
    "Estimator",
    "EstimatorResult",
    "GradientSummary",
    "NeuralBaseline",
    "RelaxedELBO",
    "ScoreFunctionELBO",
    "TemperatureSchedule",
    "compare",
    "enumerate_terms",
    "exact_elbo",
    "exact_gradient",
    "exact_iwae",
    "get_estimator",
    "gradient_samples",
    "leave_one_out_bounds",
    "parameter_groups",
    "relaxed_sample",
]
