"""Likelihood bounds per datapoint for any Pyro model/guide pair: the ELBO, the
importance-weighted bound :math:`\\mathcal L_K`, a :math:`\\log p(x)` estimate and the ELBO gap;
annealed importance sampling and the BDMC sandwich."""

from pyro_vae.bounds.ais import AISResult, ais
from pyro_vae.bounds.amortization_gap import AmortizationGap, amortization_gap
from pyro_vae.bounds.bdmc import BDMCResult, bdmc
from pyro_vae.bounds.elbo import elbo
from pyro_vae.bounds.elbo_gap import ELBOGap, elbo_gap
from pyro_vae.bounds.estimate import BoundEstimate
from pyro_vae.bounds.iwae import iwae, log_marginal
from pyro_vae.bounds.iwae_objective import IWAE
from pyro_vae.bounds.schedules import LinearSchedule, SigmoidSchedule

__all__ = [
    "IWAE",
    "AISResult",
    "AmortizationGap",
    "BDMCResult",
    "BoundEstimate",
    "ELBOGap",
    "LinearSchedule",
    "SigmoidSchedule",
    "ais",
    "amortization_gap",
    "bdmc",
    "elbo",
    "elbo_gap",
    "iwae",
    "log_marginal",
]
