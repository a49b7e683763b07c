"""Reproducible train/validation/test splits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyro_vae.data.dataset import Dataset
from pyro_vae.errors import InputError


@dataclass(frozen=True)
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


def split(
    dataset: Dataset, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> Splits:
    """Shuffle the rows with a generator seeded by ``seed`` and cut them into three parts.

    The same ``seed`` gives the same split on every machine (CPU generator).
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InputError(
            f"need 0 <= val_fraction, test_fraction and their sum < 1; got {val_fraction}, {test_fraction}"
        )
    n = len(dataset)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n - n_val - n_test < 1 or (val_fraction > 0 and n_val == 0) or (test_fraction > 0 and n_test == 0):
        raise InputError(f"{dataset.name} has {n} rows, too few for fractions {val_fraction}/{test_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(dataset.x.device)
    name = dataset.name
    return Splits(
        train=dataset.subset(perm[n_val + n_test :], name=f"{name} (train)"),
        val=dataset.subset(perm[:n_val], name=f"{name} (validation)"),
        test=dataset.subset(perm[n_val : n_val + n_test], name=f"{name} (test)"),
    )
