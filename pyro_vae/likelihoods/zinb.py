"""Zero-inflated negative binomial likelihood (scVI's observation model)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae._checks import check_counts
from pyro_vae.likelihoods.base import Likelihood
from pyro_vae.likelihoods.negative_binomial import nb_parameters_from_log_mean


class ZINB(Likelihood):
    """Zero-inflated negative binomial [1]:

    .. math::
        p(x_d \\mid z) = \\pi_d\\,\\delta_0(x_d) + (1 - \\pi_d)\\,\\mathrm{NB}(x_d; \\mu_d, \\theta_d),

    with :math:`\\mu_d = \\exp f_d(z)`, dropout probability
    :math:`\\pi_d = \\sigma(g_d(z))` (both from the decoder, two outputs per feature)
    and a learned per-feature inverse dispersion :math:`\\theta_d`.

    References:
        [1] Lopez, Regier, Cole, Jordan & Yosef (2018), "Deep generative modeling for
        single-cell transcriptomics", Nature Methods 15, 1053-1058.
    """

    max_magnitude = 1e8
    scale_advice = (
        "are these counts? Raw single-cell or sequencing counts stay far below this; divide them "
        "by a size factor, or model log-transformed values with a Gaussian likelihood"
    )

    outputs_per_feature = 2

    def __init__(self, num_features: int, *, init_inverse_dispersion: float = 1.0) -> None:
        super().__init__(num_features)
        self.log_inverse_dispersion = nn.Parameter(
            torch.full((num_features,), float(torch.log(torch.tensor(init_inverse_dispersion))))
        )

    @property
    def inverse_dispersion(self) -> torch.Tensor:
        return self.log_inverse_dispersion.exp()

    def forward(self, decoder_output: torch.Tensor) -> dist.TorchDistribution:
        log_mean, gate_logits = self._split(decoder_output)
        theta, logits = nb_parameters_from_log_mean(log_mean, self.log_inverse_dispersion)
        return dist.ZeroInflatedNegativeBinomial(
            total_count=theta,
            logits=logits,
            gate_logits=gate_logits,
            validate_args=False,
        ).to_event(1)

    def validate(self, x: torch.Tensor, *, name: str = "data") -> None:
        check_counts(x, name=name, likelihood="ZINB")
