"""Bernoulli likelihood for binary data."""

from __future__ import annotations

import pyro.distributions as dist
import torch

from pyro_vae._checks import check_binary
from pyro_vae.infer.log_prob import bernoulli_log_prob
from pyro_vae.likelihoods.base import Likelihood


class _BernoulliVector(dist.Independent):
    """``Bernoulli(logits).to_event(1)`` whose ``log_prob`` is
    :func:`~pyro_vae.infer.log_prob.bernoulli_log_prob`, also where Pyro's own losses call it:
    the per-feature terms summed before they are negated (one pass fewer over a
    ``(particles, batch, features)`` tensor, a sixth of the cost of evaluating
    :math:`\\log p(x \\mid z)` for many particles), and in evaluation its fewer passes."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob(self.base_dist.logits, value, 1)


class Bernoulli(Likelihood):
    """:math:`x_d \\mid z \\sim \\mathrm{Bernoulli}(\\sigma(f_d(z)))`, parameterized by logits.

    :param num_features: data dimension :math:`D`.
    :param allow_probabilities: accept data in :math:`[0, 1]` (grey levels) instead of
        only :math:`\\{0, 1\\}`. The "continuous Bernoulli" normalizer is *not* added, so
        with non-binary data the ELBO is not a bound on a normalized density; this is
        the common practice of training on grey-level MNIST, made explicit. [1]

    References:
        [1] Loaiza-Ganem & Cunningham (2019), "The continuous Bernoulli: fixing a
        pervasive error in variational autoencoders", NeurIPS.
    """

    def __init__(self, num_features: int, *, allow_probabilities: bool = False) -> None:
        super().__init__(num_features)
        self.allow_probabilities = allow_probabilities

    def forward(self, decoder_output: torch.Tensor) -> dist.TorchDistribution:
        return _BernoulliVector(dist.Bernoulli(logits=decoder_output, validate_args=False), 1)

    def validate(self, x: torch.Tensor, *, name: str = "data") -> None:
        check_binary(x, name=name, allow_probabilities=self.allow_probabilities)
