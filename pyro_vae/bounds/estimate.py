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
