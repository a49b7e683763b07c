"""A learned diagonal Gaussian prior."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyro_vae._checks import check_positive_int


def inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    """:math:`\\log(e^v - 1)`, the inverse of ``softplus``, stable for large ``v``."""
    return value + torch.log(-torch.expm1(-value))


class LearnedNormal(nn.Module):
    """:math:`p_\\theta(z) = \\mathcal N(\\mu, \\operatorname{diag} \\sigma^2)` with learned
    :math:`\\mu` and :math:`\\sigma = \\mathrm{softplus}(\\rho) + 10^{-5}`, initialized at
    :math:`\\mathcal N(0, I)`.

    With a diagonal Gaussian guide the KL term stays in closed form. (With an expressive
    decoder a learned location and scale can be absorbed by the decoder's first layer; the
    prior matters when it is richer, see :class:`~pyro_vae.priors.MixtureOfGaussians`.)
    ``forward(like)`` returns the prior on the dtype and device of ``like``.
    """

    def __init__(self, latent_dim: int, *, min_scale: float = 1e-5) -> None:
        super().__init__()
        check_positive_int(latent_dim, "latent_dim")
        self.latent_dim = latent_dim
        self.min_scale = min_scale
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(inverse_softplus(torch.ones(latent_dim) - min_scale))

    @property
    def scale(self) -> torch.Tensor:
        return softplus(self.raw_scale) + self.min_scale

    def forward(self, like: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(self.loc.to(like), self.scale.to(like)).to_event(1)
