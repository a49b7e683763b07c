"""Diagnostics: importance-weight reliability (PSIS k-hat, ESS), posterior collapse
(active units, KL per dimension, ELBO surgery) and posterior samples as ArviZ InferenceData."""

from pyro_vae.diagnostics.collapse import (
    ActiveUnits,
    active_units,
    active_units_per_site,
    kl_per_dimension,
    kl_per_site,
    posterior_means,
)
from pyro_vae.diagnostics.elbo_surgery import ELBOSurgery, elbo_surgery
from pyro_vae.diagnostics.importance import (
    ImportanceDiagnostics,
    effective_sample_size,
    importance_diagnostics,
    pareto_k_hat,
)
from pyro_vae.diagnostics.posterior import posterior_inference_data

__all__ = [
    "ActiveUnits",
    "ELBOSurgery",
    "ImportanceDiagnostics",
    "active_units",
    "active_units_per_site",
    "effective_sample_size",
    "elbo_surgery",
    "importance_diagnostics",
    "kl_per_dimension",
    "kl_per_site",
    "pareto_k_hat",
    "posterior_inference_data",
    "posterior_means",
]
