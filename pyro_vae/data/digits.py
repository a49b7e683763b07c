"""The 8x8 handwritten digits bundled with scikit-learn (no download)."""

from __future__ import annotations

import torch

from pyro_vae.data.binarize import binarize as _binarize
from pyro_vae.data.dataset import Dataset


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
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    x = torch.as_tensor(raw.data, dtype=dtype) / 16.0
    if binarize:
        x = _binarize(x, seed=seed)
    y = torch.as_tensor(raw.target, dtype=torch.long)
    return Dataset(x=x, y=y, name="digits", image_shape=(8, 8), num_classes=10)
