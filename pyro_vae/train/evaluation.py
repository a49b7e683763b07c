"""Per-datapoint ELBO, rate and distortion over a data set, for any model/guide pair."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae.infer.modes import frozen_evaluation
from pyro_vae.infer.particles import ProgramPlan
from pyro_vae.infer.per_datapoint import chunked_log_terms


@dataclass(frozen=True)
class RateDistortion:
    """Monte Carlo estimates per datapoint (shape ``(N,)``), averaged over particles:
    ``rate`` :math:`\\approx \\mathrm{KL}(q(z|x) \\| p(z))`, ``distortion``
    :math:`\\approx -E_q \\log p(x|z)`, and ``elbo`` :math:`= -(\\text{rate} + \\text{distortion})` [1].

    References:
        [1] Alemi et al. (2018), "Fixing a broken ELBO", ICML.
    """

    elbo: torch.Tensor
    rate: torch.Tensor
    distortion: torch.Tensor


@torch.no_grad()
def rate_distortion(
    model: Callable,
    guide: Callable,
    data: tuple[torch.Tensor, ...],
    *,
    batch_size: int = 1024,
    num_particles: int = 1,
    plate_name: str | None = None,
    plan: ProgramPlan | None = None,
    **kwargs: Any,
) -> RateDistortion:
    """ELBO, rate and distortion of every row of ``data``, evaluated in chunks of ``batch_size``
    (``plan``: the program's probe from an earlier call, see
    :func:`~pyro_vae.infer.per_datapoint.probe`)."""
    rates, dists = [], []
    with frozen_evaluation():  # once for all chunks
        for terms in chunked_log_terms(
            model,
            guide,
            *data,
            data_chunk=batch_size,
            num_particles=num_particles,
            plate_name=plate_name,
            plan=plan,
            **kwargs,
        ):
            rates.append(terms.rate.mean(0))
            dists.append(terms.distortion.mean(0))
    rate, distortion = torch.cat(rates), torch.cat(dists)
    return RateDistortion(elbo=-(rate + distortion), rate=rate, distortion=distortion)
