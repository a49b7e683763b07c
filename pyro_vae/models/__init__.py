"""Models as Pyro programs: each exposes ``model`` and ``guide`` methods."""

from pyro_vae.models.discrete_latents import BernoulliLatent, CategoricalLatent
from pyro_vae.models.discrete_vae import DiscreteVAE
from pyro_vae.models.hierarchical_vae import HierarchicalVAE
from pyro_vae.models.linear_gaussian import LinearGaussian
from pyro_vae.models.m2 import M2, UNLABELLED
from pyro_vae.models.masked_vae import MaskedVAE
from pyro_vae.models.scvi import LibraryPrior, ScVI
from pyro_vae.models.vae import VAE

__all__ = [
    "M2",
    "UNLABELLED",
    "VAE",
    "BernoulliLatent",
    "CategoricalLatent",
    "DiscreteVAE",
    "HierarchicalVAE",
    "LibraryPrior",
    "LinearGaussian",
    "MaskedVAE",
    "ScVI",
]
