"""The scVI model of ``pyro-vae train --data cells.h5ad --likelihood zinb [--batch-key KEY]``."""

from __future__ import annotations

from pyro_vae.commands.configs import TrainConfig
from pyro_vae.data import Dataset
from pyro_vae.errors import InputError
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.models import LibraryPrior, ScVI


def build_scvi(config: TrainConfig, data: Dataset) -> ScVI:
    """:class:`~pyro_vae.models.ScVI` over the genes of ``data``, with ``data.y`` as the batch
    when ``config.batch_key`` is set, and a latent library with the data-derived log-normal
    prior when ``config.library == "latent"`` (observed otherwise)."""
    if config.batch_key is not None and data.y is None:
        raise InputError(f"{data.name} has no batch codes")
    num_batches = data.num_classes if config.batch_key is not None else 0
    prior = None
    if config.library == "latent":
        prior = LibraryPrior.from_counts(data.x, data.y if num_batches else None, num_batches=num_batches)
    return ScVI(
        LIKELIHOODS[config.likelihood](data.num_features),
        num_batches=num_batches,
        latent_dim=config.latent_dim,
        hidden=config.hidden,
        library_prior=prior,
    )
