"""The diagonal Gaussian posterior family, the default of the amortized guides."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class DiagonalGaussian(nn.Module):
    """:math:`q(z \\mid x) = \\mathcal N(\\mu(x), \\operatorname{diag} \\sigma^2(x))`,
    reparameterized as :math:`z = \\mu + \\sigma \\odot \\epsilon` [1]. No parameters of its
    own: the encoder computes :math:`\\mu, \\sigma`; ``context_dim`` is 0 (no context needed).

    References:
        [1] Kingma & Welling (2014), "Auto-encoding variational Bayes", ICLR.
    """

    context_dim = 0

    def forward(
        self, loc: torch.Tensor, scale: torch.Tensor, context: torch.Tensor | None = None
    ) -> dist.TorchDistribution:
        return dist.Normal(loc, scale).to_event(1)
