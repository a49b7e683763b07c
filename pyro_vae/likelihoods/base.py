"""The likelihood interface: a module mapping decoder output to :math:`p(x \\mid z)`."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from pyro.distributions import TorchDistribution
from torch import nn

from pyro_vae._checks import check_matrix, check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.likelihoods.mask import mask_features


def check_likelihood(likelihood: object) -> None:
    """A model's ``likelihood`` argument must be a :class:`Likelihood`."""
    if not isinstance(likelihood, Likelihood):
        raise InputError(f"likelihood must be a pyro_vae Likelihood, got {type(likelihood).__name__}")


class Likelihood(nn.Module, ABC):
    """Observation model :math:`p_\\theta(x \\mid z)` of a VAE, factorized over features.

    A likelihood is passed *into* a model (composition): the decoder produces
    ``outputs_per_feature * num_features`` numbers per datapoint and
    :meth:`forward` turns them into a distribution whose event shape is
    ``(num_features,)``. Parameters that do not depend on ``z`` (a Gaussian
    scale, a negative-binomial dispersion) live on the likelihood module, so
    the model registers them with ``pyro.module``.

    :param num_features: the dimension :math:`D` of one datapoint.
    """

    #: how many decoder outputs each feature needs
    outputs_per_feature: int = 1

    #: largest magnitude of a value a network decoder can be expected to fit from the usual
    #: initialization and learning rates (``None``: no limit); larger data get an error naming
    #: the scale and suggesting to standardize, rather than a non-finite loss later
    max_magnitude: float | None = None

    def __init__(self, num_features: int) -> None:
        super().__init__()
        check_positive_int(num_features, "num_features")
        self.num_features = num_features

    @property
    def num_outputs(self) -> int:
        """Width of the decoder's last layer."""
        return self.outputs_per_feature * self.num_features

    @abstractmethod
    def forward(self, decoder_output: torch.Tensor) -> TorchDistribution:
        """Distribution of :math:`x` with batch shape ``decoder_output.shape[:-1]``
        and event shape ``(num_features,)``."""

    def masked(self, decoder_output: torch.Tensor, mask: torch.Tensor) -> TorchDistribution:
        """:meth:`forward` with the features where ``mask`` is 0 left out of the density (missing
        data; see :func:`~pyro_vae.likelihoods.mask.mask_features`)."""
        return mask_features(self(decoder_output), mask)

    @abstractmethod
    def validate(self, x: torch.Tensor, *, name: str = "data") -> None:
        """Raise :class:`~pyro_vae.errors.InputError` if ``x`` is outside the support."""

    def check_data(self, x: torch.Tensor, *, name: str = "data") -> None:
        """Check observations against this likelihood before any work: a finite 2-D float
        tensor, ``num_features`` columns, values in the support (:meth:`validate`)."""
        check_matrix(x, name=name)
        if x.shape[1] != self.num_features:
            raise InputError(
                f"{name} has {x.shape[1]} features (columns) but the model expects {self.num_features}"
            )
        self.validate(x, name=name)
        if self.max_magnitude is not None:
            largest = x.abs().max().item()
            if largest > self.max_magnitude:
                raise InputError(
                    f"{name} has values up to {largest:.3g} in magnitude, beyond {self.max_magnitude:.0e}, "
                    f"the scale a {type(self).__name__} likelihood with a network decoder can fit: "
                    f"{self.scale_advice}"
                )

    scale_advice = "standardize the features (subtract each column's mean, divide by its standard deviation)"

    def _split(self, decoder_output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return decoder_output.split(self.num_features, dim=-1)
