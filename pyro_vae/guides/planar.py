"""Planar flow posterior with parameters computed from the encoder's context."""

from __future__ import annotations

from collections.abc import Sequence

from pyro.distributions.transforms import ConditionalPlanar
from pyro.nn import DenseNN
from torch import nn

from pyro_vae.guides.conditional_flow import ConditionalFlowPosterior


class PlanarPosterior(ConditionalFlowPosterior):
    """Planar flows [1] on top of the encoder's diagonal Gaussian, amortized as in [1]:
    each step's parameters are a function of the context :math:`h(x)` the encoder outputs.

    .. math::
        z_0 = \\mu(x) + \\sigma(x) \\odot \\epsilon, \\qquad
        z_t = z_{t-1} + \\hat u_t\\, \\tanh(w_t^\\top z_{t-1} + b_t), \\qquad
        \\log q(z_T \\mid x) = \\log \\mathcal N(z_0; \\mu, \\operatorname{diag}\\sigma^2)
        - \\sum_{t=1}^T \\log \\big|1 + \\hat u_t^\\top \\psi_t(z_{t-1})\\big|,

    with :math:`\\psi_t(z) = (1 - \\tanh^2(w_t^\\top z + b_t))\\, w_t`, :math:`(u_t, w_t, b_t)
    = \\mathrm{MLP}_t(h(x))` and :math:`\\hat u_t` the modification of :math:`u_t` that
    keeps the step invertible (:math:`w_t^\\top \\hat u_t \\ge -1`, [1] Appendix A). The steps
    are Pyro's ``ConditionalPlanar`` with a ``DenseNN``. A planar step has no closed-form
    inverse, so the density is available at the guide's own samples (which is all that the
    ELBO, the bounds and ``fit`` need), not at arbitrary values.

    :param latent_dim: :math:`K`.
    :param context_dim: the width of :math:`h`.
    :param num_steps: :math:`T`.
    :param hidden: hidden widths of each step's MLP; default ``(max(10 K, context_dim),)``.

    References:
        [1] Rezende & Mohamed (2015), "Variational inference with normalizing flows", ICML.
    """

    def __init__(
        self,
        latent_dim: int,
        context_dim: int,
        *,
        num_steps: int = 2,
        hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__(latent_dim, context_dim, num_steps=num_steps)
        hidden = self._hidden_widths(hidden)
        self.steps = nn.ModuleList(
            ConditionalPlanar(DenseNN(context_dim, list(hidden), param_dims=[1, latent_dim, latent_dim]))
            for _ in range(num_steps)
        )
