"""Models as Pyro programs: each exposes ``model`` and ``guide`` methods."""

from pyro_vae.models.linear_gaussian import LinearGaussian
from pyro_vae.models.vae import VAE

__all__ = ["VAE", "LinearGaussian"]
