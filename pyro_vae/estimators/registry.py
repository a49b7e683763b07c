"""Gradient estimators by name: a fresh Pyro loss per use, and what each is unbiased for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyro.infer import Trace_ELBO

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.estimators.arm import ARM
from pyro_vae.estimators.baselines import DecayingAverageBaseline, NeuralBaseline
from pyro_vae.estimators.enumeration import DEFAULT_MAX_CONFIGURATIONS, EnumerationELBO
from pyro_vae.estimators.relaxed import RelaxedELBO, TemperatureSchedule
from pyro_vae.estimators.score_function import ScoreFunctionELBO
from pyro_vae.estimators.vimco import VIMCO


@dataclass(frozen=True)
class Estimator:
    """A named gradient estimator.

    :ivar name: its name in tables and on the command line.
    :ivar make_loss: returns a *fresh* Pyro loss (estimators with state, such as baselines
        and temperature schedules, start from scratch every time).
    :ivar objective_particles: :math:`K` of the bound :math:`\\mathcal L_K` whose gradient it
        estimates (1: the ELBO).
    :ivar unbiased: whether its gradient is unbiased for that bound.
    :ivar description: one line for tables and docs.
    """

    name: str
    make_loss: Callable[[], Any]
    objective_particles: int = 1
    unbiased: bool = True
    description: str = ""


ESTIMATORS = ("score", "score-avg", "nvil", "vimco", "arm", "gumbel", "st-gumbel", "enum")
"""The names :func:`get_estimator` knows."""


def get_estimator(
    name: str,
    *,
    num_particles: int = 5,
    temperature: float | TemperatureSchedule | None = None,
    max_configurations: int = DEFAULT_MAX_CONFIGURATIONS,
) -> Estimator:
    """The estimator called ``name`` (one of :data:`ESTIMATORS`):

    - ``score``: REINFORCE, Pyro's ``Trace_ELBO`` (plate-wise Rao-Blackwellized, no baseline);
    - ``score-avg``: score function with a decaying-average baseline;
    - ``nvil``: score function with NVIL's input-dependent neural baseline;
    - ``vimco``: VIMCO with ``num_particles`` samples (gradient of :math:`\\mathcal L_K`);
    - ``arm``: ARM, for Bernoulli codes (two antithetic evaluations per step);
    - ``gumbel`` / ``st-gumbel``: Gumbel-softmax / straight-through at ``temperature``
      (default: Jang et al.'s annealing, :class:`TemperatureSchedule`);
    - ``enum``: exact enumeration, for codes with at most ``max_configurations`` values.
    """
    check_positive_int(num_particles, "num_particles")
    tau = temperature if temperature is not None else TemperatureSchedule()
    if name == "score":
        return Estimator(name, Trace_ELBO, description="REINFORCE (Pyro Trace_ELBO)")
    if name == "score-avg":
        return Estimator(
            name,
            lambda: ScoreFunctionELBO(baseline=DecayingAverageBaseline()),
            description="score function, decaying-average baseline",
        )
    if name == "nvil":
        return Estimator(
            name,
            lambda: ScoreFunctionELBO(baseline=NeuralBaseline()),
            description="score function, NVIL neural baseline",
        )
    if name == "vimco":
        if num_particles < 2:
            raise InputError(f"vimco needs num_particles >= 2, got {num_particles}")
        return Estimator(
            name,
            lambda: VIMCO(num_particles=num_particles),
            objective_particles=num_particles,
            description=f"VIMCO, K={num_particles} (gradient of L_{num_particles})",
        )
    if name == "arm":
        return Estimator(name, ARM, description="ARM (Bernoulli codes)")
    if name in ("gumbel", "st-gumbel"):
        straight = name == "st-gumbel"
        return Estimator(
            name,
            lambda: RelaxedELBO(temperature=tau, straight_through=straight),
            unbiased=False,
            description=("straight-through " if straight else "") + "Gumbel-softmax",
        )
    if name == "enum":
        return Estimator(
            name,
            lambda: EnumerationELBO(max_configurations=max_configurations),
            description="exact enumeration",
        )
    raise InputError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)}")
