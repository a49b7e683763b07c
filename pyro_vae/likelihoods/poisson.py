"""Poisson likelihood for counts."""

from __future__ import annotations

import pyro.distributions as dist
import torch

from pyro_vae._checks import check_counts
from pyro_vae.likelihoods.base import Likelihood


class Poisson(Likelihood):
    """:math:`x_d \\mid z \\sim \\mathrm{Poisson}(\\exp f_d(z))`: the decoder outputs log-rates."""

    max_magnitude = 1e8
    scale_advice = (
        "are these counts? Raw single-cell or sequencing counts stay far below this; divide them "
        "by a size factor, or model log-transformed values with a Gaussian likelihood"
    )

    def forward(self, decoder_output: torch.Tensor) -> dist.TorchDistribution:
        return dist.Poisson(decoder_output.exp(), validate_args=False).to_event(1)

    def validate(self, x: torch.Tensor, *, name: str = "data") -> None:
        check_counts(x, name=name, likelihood="Poisson")
