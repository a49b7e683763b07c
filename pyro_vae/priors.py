"""Priors :math:`p(z)` over the latent code, passed into models."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae._checks import check_positive_int


class StandardNormal(nn.Module):
    """:math:`p(z) = \\mathcal N(0, I_K)`, with the dtype and device of a reference tensor."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        check_positive_int(latent_dim, "latent_dim")
        self.latent_dim = latent_dim

    def forward(self, like: torch.Tensor) -> dist.TorchDistribution:
        zero = like.new_zeros(())
        return dist.Normal(zero, zero + 1, validate_args=False).expand([self.latent_dim]).to_event(1)
