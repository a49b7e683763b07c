"""Multilayer perceptrons used as encoders and decoders."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.functional import softplus

from pyro_vae._checks import check_positive_int, check_widths


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """``Linear -> activation`` for each hidden width, then a final ``Linear``."""
    check_positive_int(in_features, "in_features")
    check_positive_int(out_features, "out_features")
    check_widths(hidden, allow_empty=True)
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """Maps an input to the location and scale of a diagonal Gaussian.

    The last layer has ``2 * latent_dim`` outputs ``(loc, rho)`` and
    :math:`\\sigma = \\mathrm{softplus}(\\rho) + \\epsilon`, one matrix product for both.
    With ``context_dim > 0`` it has ``context_dim`` more outputs, a context :math:`h` for a
    flow posterior (:mod:`pyro_vae.guides`), and returns ``(loc, scale, h)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        latent_dim: int,
        *,
        activation: Callable[[], nn.Module] = nn.ReLU,
        min_scale: float = 1e-5,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        check_positive_int(context_dim, "context_dim", minimum=0)
        self.in_features = in_features
        self.latent_dim = latent_dim
        self.context_dim = context_dim
        self.min_scale = min_scale
        self.net = mlp(in_features, hidden, 2 * latent_dim + context_dim, activation=activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.context_dim == 0:
            loc, rho = self.net(x).split(self.latent_dim, dim=-1)
            return loc, softplus(rho) + self.min_scale
        loc, rho, h = self.net(x).split((self.latent_dim, self.latent_dim, self.context_dim), dim=-1)
        return loc, softplus(rho) + self.min_scale, h


def mirrored_decoder(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """The decoder that mirrors an encoder of hidden widths ``hidden``: an :func:`mlp` with
    those widths reversed, from the latent (plus covariate) width to the likelihood's
    ``out_features`` outputs."""
    return mlp(in_features, tuple(reversed(hidden)), out_features, activation=activation)
