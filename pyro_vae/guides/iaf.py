"""Inverse autoregressive flow posterior, conditioned on the encoder's context."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from pyro_vae.guides.conditional_flow import ConditionalFlowPosterior


class IAFPosterior(ConditionalFlowPosterior):
    """Inverse autoregressive flow [1] on top of the encoder's diagonal Gaussian:

    .. math::
        z_0 = \\mu(x) + \\sigma(x) \\odot \\epsilon, \\qquad
        z_t = s_t \\odot z_{t-1} + (1 - s_t) \\odot m_t, \\quad
        (m_t, \\log\\text{-}s_t) = \\mathrm{MADE}_t(z_{t-1}, h(x)),\\ s_t = \\mathrm{sigmoid}(\\cdot),

    for :math:`t = 1, \\dots, T`, where :math:`\\mathrm{MADE}_t` is autoregressive in
    :math:`z_{t-1}` (output :math:`j` depends on inputs before :math:`j` in the step's order)
    and takes the context :math:`h(x)` that the encoder outputs alongside
    :math:`\\mu, \\sigma`. The Jacobian of each step is triangular, so

    .. math::
        \\log q(z_T \\mid x) = \\log \\mathcal N(z_0; \\mu, \\operatorname{diag}\\sigma^2)
        - \\sum_{t=1}^T \\sum_j \\log s_{t,j}.

    This is Kingma et al.'s numerically stable update (the ``stable=True`` form of Pyro's
    ``AffineAutoregressive``, gate bias ``sigmoid_bias``); the steps are Pyro's
    ``ConditionalAffineAutoregressive`` with a ``ConditionalAutoRegressiveNN``, the order of
    the variables reversed between steps (fixed, not random, so that a rebuilt model has the
    same masks). Sampling and the density of a sample are one pass; the density of any other
    value inverts each step one dimension at a time.

    :param latent_dim: :math:`K`.
    :param context_dim: the width of :math:`h` (the encoder is built with this many extra outputs).
    :param num_steps: :math:`T`.
    :param hidden: hidden widths of each step's MADE; default ``(max(10 K, context_dim),)``.

    References:
        [1] Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), "Improved
        variational inference with inverse autoregressive flow", NeurIPS.
        [2] Germain, Gregor, Murray & Larochelle (2015), "MADE: masked autoencoder for
        distribution estimation", ICML.
    """

    def __init__(
        self,
        latent_dim: int,
        context_dim: int,
        *,
        num_steps: int = 2,
        hidden: Sequence[int] | None = None,
        sigmoid_bias: float = 2.0,
    ) -> None:
        super().__init__(latent_dim, context_dim, num_steps=num_steps)
        hidden = self._hidden_widths(hidden)
        order = torch.arange(latent_dim)
        steps = []
        for t in range(num_steps):
            made = ConditionalAutoRegressiveNN(
                latent_dim, context_dim, list(hidden), permutation=order if t % 2 == 0 else order.flip(0)
            )
            steps.append(ConditionalAffineAutoregressive(made, stable=True, sigmoid_bias=sigmoid_bias))
        self.steps = nn.ModuleList(steps)
