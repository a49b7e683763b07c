"""A per-datapoint bound with its Monte Carlo standard error."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BoundEstimate:
    """A per-datapoint bound (shape ``(N,)``) with its Monte Carlo standard error.

    For :math:`\\mathcal L_K` the error is the delta-method error of :math:`\\log \\hat p`,
    :math:`\\mathrm{sd}(w) / (\\sqrt K\\, \\bar w)`; for the ELBO it is the standard error of
    the particle average. ``mode`` says how the particles were drawn (``"vectorized"``,
    ``"sequential"`` or ``"single"``).
    """

    value: torch.Tensor
    standard_error: torch.Tensor
    num_particles: int
    mode: str = "vectorized"


def difference(upper: BoundEstimate, lower: BoundEstimate) -> BoundEstimate:
    """``upper - lower`` per datapoint, with the standard error of independent estimates,
    :math:`\\sqrt{\\mathrm{se}_u^2 + \\mathrm{se}_l^2}` (e.g. the ELBO gap
    :math:`\\log \\hat p(x) - \\widehat{\\mathrm{ELBO}}(x)`)."""
    return BoundEstimate(
        value=upper.value - lower.value,
        standard_error=(upper.standard_error**2 + lower.standard_error**2).sqrt(),
        num_particles=upper.num_particles,
        mode=upper.mode,
    )
