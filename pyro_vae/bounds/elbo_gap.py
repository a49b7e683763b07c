"""The ELBO gap :math:`\\log p(x) - \\mathrm{ELBO} = \\mathrm{KL}(q(z \\mid x) \\| p(z \\mid x))`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyro_vae._stats import summarize
from pyro_vae.bounds.elbo import elbo as elbo_bound
from pyro_vae.bounds.estimate import BoundEstimate, difference
from pyro_vae.bounds.iwae import log_marginal


@dataclass(frozen=True)
class ELBOGap:
    """Per-datapoint estimates of :math:`\\log p(x)` and the ELBO (values ``(N,)`` with their
    standard errors) and their difference."""

    log_marginal: BoundEstimate
    elbo: BoundEstimate

    @property
    def gap(self) -> BoundEstimate:
        """:math:`\\log \\hat p(x) - \\widehat{\\mathrm{ELBO}}(x)` with its standard error."""
        return difference(self.log_marginal, self.elbo)

    def summary(self) -> dict[str, float]:
        """Data-set means; ``*_se`` are standard errors of the mean over datapoints."""
        return summarize(
            {"log_marginal": self.log_marginal.value, "elbo": self.elbo.value, "gap": self.gap.value}
        )


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
    return ELBOGap(log_marginal=lm, elbo=el)
