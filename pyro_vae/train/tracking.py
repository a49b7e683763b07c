"""The held-out :math:`\\mathcal L_K` next to the ELBO during training: whether the bound the
optimizer raises is the likelihood it should raise."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pyro_vae._checks import check_positive_int
from pyro_vae.bounds.elbo import elbo
from pyro_vae.bounds.estimate import BoundEstimate
from pyro_vae.bounds.iwae import iwae
from pyro_vae.errors import InputError
from pyro_vae.infer.captured_log_weights import CapturedLogWeights
from pyro_vae.infer.particles import forked_rng
from pyro_vae.infer.per_datapoint import rows_of

TRACKED = ("val_lk", "val_lk_se", "val_lk_elbo", "val_lk_elbo_se", "val_lk_gap", "val_lk_gap_se")
"""The history columns of :class:`LogMarginalTracker`."""


def _mean(estimate: BoundEstimate) -> tuple[float, float]:
    """The mean over datapoints and its Monte Carlo error :math:`\\sqrt{\\sum_n \\mathrm{se}_n^2} / N`
    (the held-out rows are the same at every epoch, so epochs differ only by the draws and
    the parameters)."""
    n = estimate.value.shape[0]
    return estimate.value.mean().item(), (estimate.standard_error.pow(2).sum().sqrt() / n).item()


@dataclass(frozen=True)
class LogMarginalTracker:
    """Every ``every`` epochs, the held-out :math:`\\mathcal L_K` [1] with ``num_particles``
    draws (:func:`~pyro_vae.bounds.iwae`) and the ELBO of the same draws' count
    (:func:`~pyro_vae.bounds.elbo`, ``K`` draws averaged), on the first ``max_points``
    validation rows, with their Monte Carlo errors and the gap
    :math:`\\mathcal L_K - \\mathrm{ELBO}` (a lower bound on the ELBO's gap to
    :math:`\\log p(x)`; errors combined as independent). NaN in the other epochs.

    The draws come from a random number generator seeded by ``seed`` and the epoch and then
    restored, so tracking changes no draw of the training run: a tracked run trains exactly
    as an untracked one (tested). The evaluations' chunks are replayed from graphs kept
    across epochs (``capture``, a :class:`~pyro_vae.infer.captured_log_weights.CapturedLogWeights`;
    ``None``: every chunk eager), which gives the same values (tested).

    References:
        [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """

    num_particles: int
    every: int = 1
    max_points: int = 2000
    seed: int = 0
    capture: CapturedLogWeights | None = field(default_factory=CapturedLogWeights, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_positive_int(self.num_particles, "track_log_marginal (K)")
        check_positive_int(self.every, "track_every")
        check_positive_int(self.max_points, "eval_max_points")

    def due(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (counted from 1) is tracked."""
        return epoch % self.every == 0

    def __call__(
        self,
        epoch: int,
        model: Callable,
        guide: Callable,
        validation: tuple | None,
        *,
        plate_name: str | None,
    ) -> dict[str, float]:
        out = dict.fromkeys(TRACKED, math.nan)
        if not self.due(epoch):
            return out
        if validation is None:
            raise InputError("tracking the held-out L_K needs validation data (validation=...)")
        rows = rows_of(validation, 0, self.max_points)
        with forked_rng(rows):
            torch.manual_seed(self.seed * 1_000_003 + epoch)
            lk = iwae(
                model,
                guide,
                *rows,
                num_particles=self.num_particles,
                plate_name=plate_name,
                return_error=True,
                capture=False if self.capture is None else self.capture,
            )
            el = elbo(
                model,
                guide,
                *rows,
                num_particles=self.num_particles,
                plate_name=plate_name,
                return_error=True,
                capture=False if self.capture is None else self.capture,
            )
        out["val_lk"], out["val_lk_se"] = _mean(lk)  # type: ignore[arg-type]
        out["val_lk_elbo"], out["val_lk_elbo_se"] = _mean(el)  # type: ignore[arg-type]
        out["val_lk_gap"] = out["val_lk"] - out["val_lk_elbo"]
        out["val_lk_gap_se"] = math.hypot(out["val_lk_se"], out["val_lk_elbo_se"])
        return out
