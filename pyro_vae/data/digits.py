"""The 8x8 handwritten digits bundled with scikit-learn (no download)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from pyro_vae.data.binarize import binarize as _binarize
from pyro_vae.data.dataset import Dataset
from pyro_vae.errors import InputError


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The pixels (1797 x 64, float64) and labels of scikit-learn's digits, read from the file
    it ships as ``sklearn.datasets.load_digits`` reads it (``np.loadtxt`` of the gzipped CSV,
    the last column the label) without importing scikit-learn, which with SciPy took 0.83 s
    of the default ``pyro-vae train`` (docs/benchmarks.md); through ``load_digits`` itself
    where the file is not where scikit-learn keeps it."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    if spec is None:
        raise InputError("the digits come with scikit-learn: pip install scikit-learn")
    for root in spec.submodule_search_locations or ():
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, mode="rt", encoding="utf-8") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1], data[:, -1].astype(int, copy=False)
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    return raw.data, raw.target


def load_digits(*, binarize: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32) -> Dataset:
    """1,797 images of 8x8 pixels, labels 0-9, from ``sklearn.datasets.load_digits`` [1].

    Pixel values 0..16 are scaled to [0, 1]; ``binarize=True`` applies the static
    stochastic binarization of :func:`~pyro_vae.data.binarize` with ``seed`` (for dynamic
    binarization keep the grey levels and pass
    :class:`~pyro_vae.data.DynamicBinarization` to ``fit``).

    References:
        [1] Alpaydin & Kaynak (1998), "Optical recognition of handwritten digits", UCI
        Machine Learning Repository.
    """
    pixels, target = _digits()
    x = torch.as_tensor(pixels, dtype=dtype) / 16.0
    if binarize:
        x = _binarize(x, seed=seed)
    y = torch.as_tensor(target, dtype=torch.long)
    return Dataset(x=x, y=y, name="digits", image_shape=(8, 8), num_classes=10)
