"""Gradient estimators for discrete latents, exact enumeration, and a harness to compare them."""

from pyro_vae.estimators.baselines import Baseline, DecayingAverageBaseline, NeuralBaseline
from pyro_vae.estimators.enumeration import (
    EnumeratedTerms,
    EnumerationELBO,
    enumerate_terms,
    exact_elbo,
    exact_iwae,
)
from pyro_vae.estimators.relaxed import RelaxedELBO, TemperatureSchedule, relaxed_sample
from pyro_vae.estimators.score_function import ScoreFunctionELBO
from pyro_vae.estimators.vimco import VIMCO, leave_one_out_bounds

__all__ = [
    "VIMCO",
    "Baseline",
    "DecayingAverageBaseline",
    "EnumeratedTerms",
    "EnumerationELBO",
    "NeuralBaseline",
    "RelaxedELBO",
    "ScoreFunctionELBO",
    "TemperatureSchedule",
    "enumerate_terms",
    "exact_elbo",
    "exact_iwae",
    "leave_one_out_bounds",
    "relaxed_sample",
]
