"""The standard normal prior :math:`p(z) = \\mathcal N(0, I)`."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae._checks import check_positive_int


class StandardNormal(nn.Module):
    """:math:`p(z) = \\mathcal N(0, I_K)`.

    Its location and scale are buffers, so they follow the model's ``.to(...)``,
    ``.double()`` or ``.cuda()``; ``forward`` takes a reference tensor and returns the
    prior on that tensor's dtype and device (converting only if they differ).
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        check_positive_int(latent_dim, "latent_dim")
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self, like: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self.loc, self.scale
        if loc.dtype != like.dtype or loc.device != like.device:
            loc, scale = loc.to(like), scale.to(like)
        return dist.Normal(loc, scale, validate_args=False).to_event(1)
