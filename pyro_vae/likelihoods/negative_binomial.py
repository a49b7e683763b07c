"""Negative-binomial likelihood in the (mean, inverse dispersion) form used for single-cell counts."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae._checks import check_counts
from pyro_vae.likelihoods.base import Likelihood


def nb_logits(mean: torch.Tensor, inverse_dispersion: torch.Tensor) -> torch.Tensor:
    """Logits of the success probability of :math:`\\mathrm{NB}(\\mu, \\theta)`.

    With total count :math:`\\theta` and probability :math:`p`, the mean is
    :math:`\\theta p / (1 - p)`; solving for :math:`p` at mean :math:`\\mu` gives
    :math:`\\operatorname{logit} p = \\log \\mu - \\log \\theta` (Pyro's and PyTorch's
    convention, in which :math:`p` is the probability of a *success*, counted).
    In SciPy's convention the same law is ``nbinom(n=theta, p=theta / (theta + mu))``.
    """
    return mean.log() - inverse_dispersion.log()


def nb_distribution(mean: torch.Tensor, inverse_dispersion: torch.Tensor) -> dist.NegativeBinomial:
    """:math:`\\mathrm{NB}(\\mu, \\theta)`: mean :math:`\\mu`, variance :math:`\\mu + \\mu^2/\\theta`."""
    theta = inverse_dispersion.expand_as(mean) if inverse_dispersion.dim() else inverse_dispersion
    return dist.NegativeBinomial(total_count=theta, logits=nb_logits(mean, theta), validate_args=False)


def nb_parameters_from_log_mean(
    log_mean: torch.Tensor, log_inverse_dispersion: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(total_count, logits)`` of :math:`\\mathrm{NB}(e^{\\ell}, e^{\\lambda})` from the log mean
    :math:`\\ell` and the log inverse dispersion :math:`\\lambda`, computed in log space:
    :math:`\\operatorname{logit} p = \\ell - \\lambda`. Going through :math:`\\mu = e^{\\ell}`
    would overflow for large :math:`\\ell` (above ~88 in float32, ~709 in float64) and
    underflow to :math:`\\log 0` for very negative :math:`\\ell`; the log-density
    (``logsigmoid`` of the logits) and its gradient stay finite here."""
    log_theta = log_inverse_dispersion.expand_as(log_mean)
    return log_theta.exp(), log_mean - log_theta


class NegativeBinomial(Likelihood):
    """:math:`x_d \\mid z \\sim \\mathrm{NB}(\\mu_d(z), \\theta_d)` with mean
    :math:`\\mu_d = \\exp f_d(z)` and a learned per-feature inverse dispersion
    :math:`\\theta_d = \\exp \\phi_d`, so :math:`\\mathrm{Var}\\,x_d = \\mu_d + \\mu_d^2/\\theta_d`,
    as in scVI [1].

    References:
        [1] Lopez, Regier, Cole, Jordan & Yosef (2018), "Deep generative modeling for
        single-cell transcriptomics", Nature Methods 15, 1053-1058.
    """

    max_magnitude = 1e8
    scale_advice = (
        "are these counts? Raw single-cell or sequencing counts stay far below this; divide them "
        "by a size factor, or model log-transformed values with a Gaussian likelihood"
    )

    def __init__(self, num_features: int, *, init_inverse_dispersion: float = 1.0) -> None:
        super().__init__(num_features)
        self.log_inverse_dispersion = nn.Parameter(
            torch.full((num_features,), float(torch.log(torch.tensor(init_inverse_dispersion))))
        )

    @property
    def inverse_dispersion(self) -> torch.Tensor:
        return self.log_inverse_dispersion.exp()

    def forward(self, decoder_output: torch.Tensor) -> dist.TorchDistribution:
        theta, logits = nb_parameters_from_log_mean(decoder_output, self.log_inverse_dispersion)
        return dist.NegativeBinomial(total_count=theta, logits=logits, validate_args=False).to_event(1)

    def validate(self, x: torch.Tensor, *, name: str = "data") -> None:
        check_counts(x, name=name, likelihood="negative binomial")
