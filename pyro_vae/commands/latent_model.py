"""The latent part of ``pyro-vae train``'s model: prior, posterior family and stochastic
layers from a :class:`~pyro_vae.commands.configs.TrainConfig`, composed into a
:class:`~pyro_vae.models.VAE` or a :class:`~pyro_vae.models.HierarchicalVAE`."""

from __future__ import annotations

import torch
from torch import nn

from pyro_vae.commands.configs import TrainConfig
from pyro_vae.data import Dataset
from pyro_vae.guides import IAFPosterior, PlanarPosterior
from pyro_vae.likelihoods.base import Likelihood
from pyro_vae.models import VAE, HierarchicalVAE
from pyro_vae.networks import GaussianEncoder
from pyro_vae.priors import LearnedNormal, MixtureOfGaussians, StandardNormal, VampPrior


def context_width(latent_dim: int) -> int:
    """The width of the encoder's context :math:`h` for a flow posterior."""
    return 2 * latent_dim


def build_posterior(config: TrainConfig) -> nn.Module | None:
    """The posterior family named by ``config.guide`` (``None``: the diagonal Gaussian)."""
    k = config.latent_dim
    if config.guide == "iaf":
        return IAFPosterior(k, context_width(k), num_steps=config.flow_steps)
    if config.guide == "planar":
        return PlanarPosterior(k, context_width(k), num_steps=config.flow_steps)
    return None


def build_prior(config: TrainConfig, latent_dim: int, encoder: nn.Module | None, data: Dataset) -> nn.Module:
    """The prior named by ``config.prior`` on a ``latent_dim`` code; a VampPrior mixes
    ``encoder``'s posteriors at pseudo-inputs started at randomly chosen training rows."""
    if config.prior == "learned":
        return LearnedNormal(latent_dim)
    if config.prior == "mog":
        return MixtureOfGaussians(latent_dim, config.prior_components)
    if config.prior == "vamp":
        gen = torch.Generator().manual_seed(config.seed)
        rows = torch.randint(len(data.x), (config.prior_components,), generator=gen)
        return VampPrior(encoder, config.prior_components, data.num_features, init=data.x[rows].float())
    return StandardNormal(latent_dim)


def build_latent_model(
    config: TrainConfig, likelihood: Likelihood, data: Dataset, *, num_classes: int
) -> VAE | HierarchicalVAE:
    """A :class:`HierarchicalVAE` for two or more ``layers``, else a :class:`VAE`."""
    widths = config.latent_widths
    if len(widths) > 1:
        return HierarchicalVAE(
            likelihood,
            latent_dims=widths,
            hidden=config.hidden,
            beta=config.beta,
            prior=build_prior(config, widths[-1], None, data),
        )
    encoder = None
    if config.prior == "vamp":
        encoder = GaussianEncoder(data.num_features, config.hidden, config.latent_dim)
    return VAE(
        likelihood,
        latent_dim=config.latent_dim,
        hidden=config.hidden,
        beta=config.beta,
        num_classes=num_classes,
        prior=build_prior(config, config.latent_dim, encoder, data),
        posterior=build_posterior(config),
        encoder=encoder,
    )
