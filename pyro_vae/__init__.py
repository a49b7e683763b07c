"""pyro_vae: variational autoencoders as Pyro programs."""

__version__ = "0.1.0"
