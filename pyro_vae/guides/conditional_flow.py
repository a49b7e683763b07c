"""The common part of the flow posteriors: a Gaussian base pushed through context-conditioned steps."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae._checks import check_positive_int, check_widths


class ConditionalFlowPosterior(nn.Module):
    """:math:`q(z_T \\mid x)`: the encoder's diagonal Gaussian
    :math:`\\mathcal N(\\mu(x), \\operatorname{diag}\\sigma^2(x))` pushed through the
    ``num_steps`` conditional transforms in ``self.steps``, each conditioned on the context
    :math:`h(x)` the encoder outputs alongside :math:`\\mu, \\sigma`.

    A subclass builds ``self.steps`` (an ``nn.ModuleList`` of Pyro
    conditional transforms) from the widths returned by :meth:`_hidden_widths`.
    """

    def __init__(self, latent_dim: int, context_dim: int, *, num_steps: int) -> None:
        super().__init__()
        check_positive_int(latent_dim, "latent_dim")
        check_positive_int(context_dim, "context_dim")
        check_positive_int(num_steps, "num_steps")
        self.latent_dim = latent_dim
        self.context_dim = context_dim
        self.num_steps = num_steps

    def _hidden_widths(self, hidden: Sequence[int] | None) -> tuple[int, ...]:
        """The hidden widths of each step's network; default ``(max(10 K, context_dim),)``."""
        widths = tuple(hidden) if hidden is not None else (max(10 * self.latent_dim, self.context_dim),)
        check_widths(widths)
        return widths

    def forward(
        self, loc: torch.Tensor, scale: torch.Tensor, context: torch.Tensor | None = None
    ) -> dist.TorchDistribution:
        if context is None:
            raise ValueError(
                f"{type(self).__name__} needs the encoder's context h (an encoder with context_dim > 0)"
            )
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [step.condition(context) for step in self.steps])
