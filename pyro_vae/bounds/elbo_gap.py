"""The ELBO gap :math:`\\log p(x) - \\mathrm{ELBO} = \\mathrm{KL}(q(z \\mid x) \\| p(z \\mid x))`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae._stats import summarize
from pyro_vae.bounds.elbo import elbo as elbo_bound
from pyro_vae.bounds.iwae import log_marginal


@dataclass(frozen=True)
class ELBOGap:
    """Per-datapoint estimates (shape ``(N,)``) and their standard errors."""

    log_marginal: torch.Tensor
    log_marginal_se: torch.Tensor
    elbo: torch.Tensor
    elbo_se: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        """:math:`\\log \\hat p(x) - \\widehat{\\mathrm{ELBO}}(x)`."""
        return self.log_marginal - self.elbo

    @property
    def gap_se(self) -> torch.Tensor:
        return (self.log_marginal_se**2 + self.elbo_se**2).sqrt()

    def summary(self) -> dict[str, float]:
        """Data-set means; ``*_se`` are standard errors of the mean over datapoints."""
        return summarize({"log_marginal": self.log_marginal, "elbo": self.elbo, "gap": self.gap})


def elbo_gap(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 5000,
    elbo_particles: int = 100,
    **kwargs: Any,
) -> ELBOGap:
    """Estimate :math:`\\log p(x) - \\mathrm{ELBO}(x) = \\mathrm{KL}(q(z \\mid x) \\| p(z \\mid x))`
    per datapoint, with :math:`\\log p(x)` from :func:`~pyro_vae.bounds.log_marginal`
    (``num_particles`` importance samples) and the ELBO from ``elbo_particles`` samples.

    Since :math:`\\mathcal L_K \\le \\log p(x)`, the estimate is biased low by
    :math:`\\log p(x) - \\mathcal L_K`, which vanishes as :math:`K` grows [1].

    References:
        [1] Cremer, Li & Duvenaud (2018), "Inference suboptimality in variational
        autoencoders", ICML.
    """
    lm = log_marginal(model, guide, *args, num_particles=num_particles, **kwargs)
    el = elbo_bound(model, guide, *args, num_particles=elbo_particles, return_error=True, **kwargs)
    return ELBOGap(
        log_marginal=lm.value, log_marginal_se=lm.standard_error, elbo=el.value, elbo_se=el.standard_error
    )
