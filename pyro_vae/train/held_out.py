"""Train one configuration and measure it on held-out data: the ELBO, :math:`\\mathcal L_K`
and the active units of every latent site."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae._checks import check_positive_int
from pyro_vae.bounds.elbo import elbo as elbo_bound
from pyro_vae.bounds.estimate import BoundEstimate
from pyro_vae.bounds.iwae import log_marginal
from pyro_vae.diagnostics.collapse import ActiveUnits, active_units_per_site
from pyro_vae.train.fit import FitResult, fit


@dataclass(frozen=True)
class HeldOut:
    """What :func:`fit_and_evaluate` measured. Bounds are per held-out datapoint, in nats.

    :ivar elbo: the ELBO of each test point (Monte Carlo over ``elbo_particles`` draws).
    :ivar log_marginal: :math:`\\mathcal L_K` of each test point (``num_particles`` draws).
    :ivar active_units: per latent site of the guide, :math:`\\mathrm{Var}_x(E_q[z_j \\mid x])`
        over the test points and the units above the threshold.
    :ivar fit: the training run (history per epoch).
    :ivar train_seconds: wall time of training; ``eval_seconds``: of the measurements.
    """

    elbo: BoundEstimate
    log_marginal: BoundEstimate
    active_units: dict[str, ActiveUnits]
    fit: FitResult
    train_seconds: float
    eval_seconds: float

    def summary(self) -> dict[str, float]:
        """Means over the test points with their standard errors over the test points
        (``*_se_points``), the number of active units per site (``active_{site}``), the
        final training objective and the wall times."""
        n = self.elbo.value.shape[0]
        root = math.sqrt(n) if n > 1 else math.nan
        out = {
            "num_test": n,
            "num_particles": self.log_marginal.num_particles,
            "elbo": self.elbo.value.mean().item(),
            "elbo_se_points": (self.elbo.value.std() / root).item(),
            "log_marginal": self.log_marginal.value.mean().item(),
            "log_marginal_se_points": (self.log_marginal.value.std() / root).item(),
            "log_marginal_mc_se": (self.log_marginal.standard_error.pow(2).mean().sqrt() / root).item(),
            "train_objective": self.fit.last("train_objective"),
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
        }
        for site, units in self.active_units.items():
            out[f"active_{site}"] = units.count
        return out


def fit_and_evaluate(
    model: Callable,
    guide: Callable,
    train: Any,
    test: torch.Tensor,
    *,
    num_particles: int = 5000,
    elbo_particles: int = 100,
    active_unit_samples: int = 1,
    active_unit_threshold: float = 0.01,
    progress: bool = True,
    **fit_options: Any,
) -> HeldOut:
    """:func:`~pyro_vae.train.fit` ``model``/``guide`` to ``train`` (``fit_options``: ``loss``,
    ``epochs``, ``batch_size``, ``lr``, ``seed``, ...), then measure on ``test`` (rows are
    datapoints, passed as the program's first argument):

    - the ELBO per datapoint, :func:`~pyro_vae.bounds.elbo` with ``elbo_particles`` draws;
    - :math:`\\log \\hat p(x) = \\mathcal L_K` with :math:`K` = ``num_particles`` [1]
      (:func:`~pyro_vae.bounds.log_marginal`), which is :math:`\\ge` the ELBO in expectation
      and :math:`\\le \\log p(x)`;
    - the active units of every latent site [1]:
      :math:`A_j = \\mathrm{Var}_x(E_q[z_j \\mid x]) > ` ``active_unit_threshold``
      (:func:`~pyro_vae.diagnostics.active_units_per_site`, with ``active_unit_samples``
      guide runs for sites whose posterior mean depends on earlier draws or has no closed form).

    The model must be built (and its initial weights drawn) by the caller; ``fit`` seeds
    the rest of the run with its ``seed``. Training and evaluation share nothing else.

    References:
        [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """
    check_positive_int(num_particles, "num_particles")
    check_positive_int(elbo_particles, "elbo_particles")
    start = time.perf_counter()
    result = fit(model, guide, train, progress=progress, **fit_options)
    trained = time.perf_counter()
    bound = elbo_bound(model, guide, test, num_particles=elbo_particles, return_error=True)
    marginal = log_marginal(model, guide, test, num_particles=num_particles)
    units = active_units_per_site(
        guide, test, threshold=active_unit_threshold, num_samples=active_unit_samples
    )
    return HeldOut(
        elbo=bound,
        log_marginal=marginal,
        active_units=units,
        fit=result,
        train_seconds=trained - start,
        eval_seconds=time.perf_counter() - trained,
    )


def over_seeds(summaries: list[dict[str, float]]) -> dict[str, float]:
    """Mean over runs (seeds) of every numeric entry of :meth:`HeldOut.summary`, and its
    standard error over the runs, ``std / sqrt(runs)`` with Bessel's correction
    (``{key}_se_seeds``; NaN for one run). Entries that some run lacks are left out."""
    if not summaries:
        raise ValueError("over_seeds needs at least one summary")
    keys = [k for k in summaries[0] if all(k in s for s in summaries)]
    out: dict[str, float] = {"num_seeds": len(summaries)}
    for key in keys:
        values = torch.tensor([float(s[key]) for s in summaries], dtype=torch.float64)
        out[key] = values.mean().item()
        n = len(values)
        out[f"{key}_se_seeds"] = (values.std() / math.sqrt(n)).item() if n > 1 else math.nan
    return out
