"""Gaussian likelihood with a learned per-feature scale."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.likelihoods.base import Likelihood


class Gaussian(Likelihood):
    """:math:`x_d \\mid z \\sim \\mathcal N(f_d(z), \\sigma_d^2)` with
    :math:`\\sigma_d = \\mathrm{softplus}(\\rho_d) + \\sigma_{\\min}` learned per feature.

    The floor :math:`\\sigma_{\\min}` keeps the density bounded on features that are
    constant in the data (the ELBO would otherwise diverge to :math:`+\\infty` there).

    :param num_features: data dimension :math:`D`.
    :param init_scale: initial :math:`\\sigma_d`.
    :param min_scale: the floor :math:`\\sigma_{\\min}`.
    """

    max_magnitude = 1e6

    def __init__(self, num_features: int, *, init_scale: float = 1.0, min_scale: float = 1e-3) -> None:
        super().__init__(num_features)
        if not init_scale > min_scale >= 0:
            raise ValueError(f"need init_scale > min_scale >= 0, got {init_scale}, {min_scale}")
        self.min_scale = min_scale
        raw = torch.log(torch.expm1(torch.tensor(init_scale - min_scale)))
        self.raw_scale = nn.Parameter(raw.expand(num_features).clone())

    @property
    def scale(self) -> torch.Tensor:
        return softplus(self.raw_scale) + self.min_scale

    def forward(self, decoder_output: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(decoder_output, self.scale, validate_args=False).to_event(1)

    def validate(self, x: torch.Tensor, *, name: str = "data") -> None:
        """Any finite real data is in the support (finiteness is checked upstream)."""
