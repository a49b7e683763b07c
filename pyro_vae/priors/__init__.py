"""Priors :math:`p(z)` over the latent code, passed into models as ``prior=``.

Each prior is an ``nn.Module`` whose ``forward(like)`` returns the distribution on the dtype
and device of the reference tensor ``like``, with event shape ``(latent_dim,)``. A model
registers the prior's parameters (if it has any) with ``pyro.module`` in its ``model``.
"""

from pyro_vae.priors.learned_normal import LearnedNormal
from pyro_vae.priors.mixture import MixtureOfGaussians
from pyro_vae.priors.standard_normal import StandardNormal
from pyro_vae.priors.vamp import VampPrior

__all__ = ["LearnedNormal", "MixtureOfGaussians", "StandardNormal", "VampPrior"]
