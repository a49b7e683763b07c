"""Observation models :math:`p(x \\mid z)`, each a module passed into a model."""

from pyro_vae.likelihoods.base import Likelihood
from pyro_vae.likelihoods.bernoulli import Bernoulli
from pyro_vae.likelihoods.gaussian import Gaussian
from pyro_vae.likelihoods.negative_binomial import NegativeBinomial, nb_distribution, nb_logits
from pyro_vae.likelihoods.poisson import Poisson
from pyro_vae.likelihoods.zinb import ZINB

#: names accepted by the CLI's ``--likelihood``
LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "poisson": Poisson,
    "nb": NegativeBinomial,
    "zinb": ZINB,
}

__all__ = [
    "LIKELIHOODS",
    "ZINB",
    "Bernoulli",
    "Gaussian",
    "Likelihood",
    "NegativeBinomial",
    "Poisson",
    "nb_distribution",
    "nb_logits",
]
