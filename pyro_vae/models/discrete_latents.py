"""Discrete latent codes for :class:`~pyro_vae.models.DiscreteVAE`: prior, posterior, decoder input."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError


class CategoricalLatent(nn.Module):
    """:math:`L` independent categorical variables with :math:`C` categories each, one-hot,
    with a uniform prior (Jang et al. [1] use :math:`L = 20`, :math:`C = 10`).

    One Pyro site of event shape ``(L, C)``: ``OneHotCategorical(...).to_event(1)``; one-hot
    values, so that relaxations (Gumbel-softmax) can give it soft values.

    References:
        [1] Jang, Gu & Poole (2017), "Categorical reparameterization with Gumbel-softmax", ICLR.
    """

    def __init__(self, num_variables: int = 20, num_categories: int = 10) -> None:
        super().__init__()
        check_positive_int(num_variables, "num_variables")
        check_positive_int(num_categories, "num_categories", minimum=2)
        self.num_variables = num_variables
        self.num_categories = num_categories
        self.register_buffer("logits", torch.zeros(num_variables, num_categories), persistent=False)

    @property
    def num_inputs(self) -> int:
        """Width of the encoder output (logits) and of the decoder input (flattened one-hots)."""
        return self.num_variables * self.num_categories

    def prior(self, like: torch.Tensor) -> dist.TorchDistribution:
        """:math:`p(z)`, uniform, on the dtype and device of ``like``."""
        return dist.OneHotCategorical(logits=self.logits.to(like)).to_event(1)

    def posterior(self, logits: torch.Tensor) -> dist.TorchDistribution:
        """:math:`q(z \\mid x)` from the encoder's ``(..., L * C)`` output."""
        return dist.OneHotCategorical(
            logits=logits.reshape(*logits.shape[:-1], self.num_variables, self.num_categories)
        ).to_event(1)

    def flatten(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder input: ``(..., L, C) -> (..., L * C)``."""
        if z.shape[-2:] != (self.num_variables, self.num_categories):
            raise InputError(
                f"expected latent values of shape (..., {self.num_variables}, {self.num_categories}), "
                f"got {tuple(z.shape)}"
            )
        return z.flatten(-2)


class BernoulliLatent(nn.Module):
    """:math:`D` binary units with prior :math:`\\mathrm{Bernoulli}(\\pi)` each (Jang et al. [1]
    and the sigmoid belief network literature use :math:`D = 200`, :math:`\\pi = 1/2`).

    References:
        [1] Jang, Gu & Poole (2017), "Categorical reparameterization with Gumbel-softmax", ICLR.
    """

    def __init__(self, num_units: int = 200, prior_prob: float = 0.5) -> None:
        super().__init__()
        check_positive_int(num_units, "num_units")
        if not 0.0 < prior_prob < 1.0:
            raise InputError(f"prior_prob must lie in (0, 1), got {prior_prob}")
        self.num_units = num_units
        logit = torch.logit(torch.tensor(prior_prob, dtype=torch.float64)).item()
        self.register_buffer("logits", torch.full((num_units,), logit), persistent=False)

    @property
    def num_inputs(self) -> int:
        return self.num_units

    def prior(self, like: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.logits.to(like)).to_event(1)

    def posterior(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=logits).to_event(1)

    def flatten(self, z: torch.Tensor) -> torch.Tensor:
        return z
