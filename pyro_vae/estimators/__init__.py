"""Gradient estimators as Pyro losses, each a :class:`~pyro_vae.infer.ParticleLoss`: the
score function with baselines, VIMCO, ARM, Gumbel-softmax and straight-through relaxations,
and exact enumeration (the reference). The harness that compares them is
:mod:`pyro_vae.comparison`."""

from pyro_vae.estimators.arm import ARM
from pyro_vae.estimators.baselines import Baseline, DecayingAverageBaseline, NeuralBaseline
from pyro_vae.estimators.enumeration import (
    EnumeratedTerms,
    EnumerationELBO,
    enumerate_terms,
    exact_elbo,
    exact_iwae,
)
from pyro_vae.estimators.free_bits import FreeBitsELBO
from pyro_vae.estimators.registry import ESTIMATORS, Estimator, get_estimator
from pyro_vae.estimators.relaxed import RelaxedELBO, TemperatureSchedule, relaxed_sample
from pyro_vae.estimators.score_function import ScoreFunctionELBO
from pyro_vae.estimators.vimco import VIMCO, leave_one_out_bounds

__all__ = [
    "ARM",
    "ESTIMATORS",
    "VIMCO",
    "Baseline",
    "DecayingAverageBaseline",
    "EnumeratedTerms",
    "EnumerationELBO",
    "Estimator",
    "FreeBitsELBO",
    "NeuralBaseline",
    "RelaxedELBO",
    "ScoreFunctionELBO",
    "TemperatureSchedule",
    "enumerate_terms",
    "exact_elbo",
    "exact_iwae",
    "get_estimator",
    "leave_one_out_bounds",
    "relaxed_sample",
]
