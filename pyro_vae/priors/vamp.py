"""The VampPrior: a mixture of the guide's posteriors at learned pseudo-inputs."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError


class VampPrior(nn.Module):
    """The variational mixture of posteriors prior of Tomczak & Welling [1]:

    .. math::
        p_\\lambda(z) = \\frac1C \\sum_{c=1}^C q_\\phi(z \\mid u_c), \\qquad
        \\log p_\\lambda(z) = \\operatorname{logsumexp}_c \\log q_\\phi(z \\mid u_c) - \\log C,

    where :math:`q_\\phi(z \\mid x) = \\mathcal N(\\mu_\\phi(x), \\operatorname{diag}
    \\sigma^2_\\phi(x))` is the guide's encoder and :math:`u_1, \\dots, u_C` are learned
    pseudo-inputs in the data space. It approximates the optimal prior, the aggregate
    posterior :math:`\\frac1N \\sum_n q(z \\mid x_n)`, with :math:`C \\ll N` components.

    The encoder is *shared*, not copied: this module holds a reference to it but does not
    own it (it is not a submodule), so that its parameters are registered exactly once, by
    the guide, and the prior's own parameters are the pseudo-inputs only. Pass the model's
    encoder: ``VAE(..., encoder=enc, prior=VampPrior(enc, 500, 784))``; the model checks
    that it is the same object. ``.to(...)``/``.double()`` of the model moves the encoder
    (the model owns it); the pseudo-inputs move with this module.

    The KL from the guide has no closed form: the ELBO samples the prior term.

    :param encoder: a module mapping a ``(..., num_features)`` input to ``(loc, scale, ...)``
        of a diagonal Gaussian (e.g. :class:`~pyro_vae.networks.GaussianEncoder`).
    :param num_pseudo_inputs: :math:`C`.
    :param num_features: the dimension of the encoder's input (and of each :math:`u_c`).
    :param init: initial pseudo-inputs ``(C, num_features)`` (e.g. a random subset of the
        training data, as in [1]); default uniform on :math:`[0, 1)` from torch's generator.

    References:
        [1] Tomczak & Welling (2018), "VAE with a VampPrior", AISTATS.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_pseudo_inputs: int,
        num_features: int,
        *,
        init: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise InputError(f"VampPrior needs the guide's encoder module, got {type(encoder).__name__}")
        check_positive_int(num_pseudo_inputs, "num_pseudo_inputs")
        check_positive_int(num_features, "num_features")
        if init is not None and tuple(init.shape) != (num_pseudo_inputs, num_features):
            raise InputError(
                f"init must have shape ({num_pseudo_inputs}, {num_features}), got {tuple(init.shape)}"
            )
        self._encoder = (encoder,)  # a reference, not a submodule: the guide registers the encoder
        self.num_pseudo_inputs = num_pseudo_inputs
        self.num_features = num_features
        start = torch.rand(num_pseudo_inputs, num_features) if init is None else init.detach().clone()
        self.pseudo_inputs = nn.Parameter(start)

    @property
    def encoder(self) -> nn.Module:
        """The shared encoder (owned by the model, not by this prior)."""
        return self._encoder[0]

    def forward(self, like: torch.Tensor) -> dist.TorchDistribution:
        out = self.encoder(self.pseudo_inputs.to(like))
        loc, scale = out[0], out[1]
        components = dist.Normal(loc, scale).to_event(1)  # batch (C,), event (K,)
        logits = torch.zeros(self.num_pseudo_inputs, dtype=loc.dtype, device=loc.device)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)
