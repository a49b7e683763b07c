"""Reliability of importance sampling per datapoint: PSIS Pareto k-hat and effective sample size."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pyro_vae.diagnostics._arviz import arviz
from pyro_vae.infer.modes import frozen_evaluation
from pyro_vae.infer.per_datapoint import chunked_log_terms

#: k-hat thresholds of Yao et al. (2018) / Vehtari et al. (2024)
GOOD, BAD = 0.5, 0.7


def pareto_k_hat(log_weights: torch.Tensor) -> torch.Tensor:
    """PSIS shape estimate :math:`\\hat k` per column of ``log_weights`` (shape ``(K, N)``), by
    ArviZ's ``psislw`` [1, 2]. :math:`\\hat k < 0.5`: the importance weights have finite
    variance and :math:`\\mathcal L_K` is reliable; :math:`0.5 \\le \\hat k < 0.7`: usable but
    slow; :math:`\\hat k \\ge 0.7`: unreliable (the proposal :math:`q` misses mass of the posterior).
    Equal weights (a perfect proposal) give :math:`-\\infty`. Weights that take a few values
    only (a discrete guide over a small support: their tail has ties that a generalized
    Pareto fit cannot use, and such bounded weights have finite variance anyway) give NaN,
    "no tail to fit", rather than the :math:`+\\infty` ArviZ returns for them.

    References:
        [1] Yao, Vehtari, Simpson & Gelman (2018), "Yes, but did it work?: evaluating
        variational inference", ICML.
        [2] Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance
        sampling", JMLR 25(72).
    """
    lw = log_weights.detach().double().cpu().numpy().T  # ArviZ: samples on the last axis
    constant = np.ptp(lw, axis=-1) < 1e-9
    with np.errstate(invalid="ignore", divide="ignore"):
        _, k = arviz().psislw(np.ascontiguousarray(lw))
    k = np.asarray(k, dtype=np.float64)
    k = np.where(constant, -np.inf, np.where(np.isposinf(k), np.nan, k))
    return torch.as_tensor(k, dtype=log_weights.dtype, device=log_weights.device)


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """Kish's :math:`(\\sum_k w_k)^2 / \\sum_k w_k^2` per column of ``log_weights`` (``(K, N)``)."""
    return torch.exp(2 * log_weights.logsumexp(0) - (2 * log_weights).logsumexp(0))


@dataclass(frozen=True)
class ImportanceDiagnostics:
    """Per datapoint (shape ``(N,)``): ``k_hat`` and ``ess`` of ``num_particles`` weights."""

    k_hat: torch.Tensor
    ess: torch.Tensor
    num_particles: int

    def summary(self) -> dict[str, float]:
        """Medians and fractions over the datapoints whose :math:`\\hat k` could be fitted
        (``num_k_hat_not_fitted`` counts the NaN ones, see :func:`pareto_k_hat`)."""
        fitted = self.k_hat[~torch.isnan(self.k_hat)]
        k = fitted if fitted.numel() else torch.full((1,), math.nan, dtype=self.k_hat.dtype)
        return {
            "num_data": self.k_hat.shape[0],
            "num_particles": self.num_particles,
            "num_k_hat_not_fitted": int(torch.isnan(self.k_hat).sum()),
            "k_hat_median": k.median().item(),
            "k_hat_max": k.max().item(),
            "fraction_k_hat_below_0.5": (k < GOOD).double().mean().item(),
            "fraction_k_hat_0.5_to_0.7": ((k >= GOOD) & (k < BAD)).double().mean().item(),
            "fraction_k_hat_above_0.7": (k >= BAD).double().mean().item(),
            "ess_median": self.ess.median().item(),
        }


@torch.no_grad()
def importance_diagnostics(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1000,
    data_chunk: int = 100,
    plate_name: str | None = None,
    **kwargs: Any,
) -> ImportanceDiagnostics:
    """PSIS :math:`\\hat k` and the effective sample size of the weights
    :math:`w = p(x, z) / q(z \\mid x)`, :math:`z \\sim q`, for every datapoint of any program."""
    ks, esss = [], []
    with frozen_evaluation():  # once for all chunks
        for terms in chunked_log_terms(
            model,
            guide,
            *args,
            data_chunk=data_chunk,
            num_particles=num_particles,
            plate_name=plate_name,
            **kwargs,
        ):
            lw = terms.log_weight
            ks.append(pareto_k_hat(lw))
            esss.append(effective_sample_size(lw))
    return ImportanceDiagnostics(k_hat=torch.cat(ks), ess=torch.cat(esss), num_particles=num_particles)
