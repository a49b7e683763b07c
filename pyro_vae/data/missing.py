"""Missingness masks (observed = 1) for experiments with incomplete data."""

from __future__ import annotations

import torch

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError


def random_half_mask(
    rows: int, features: int, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Each row hides ``features // 2`` features chosen uniformly at random (missing
    completely at random), independently across rows; shape ``(rows, features)``."""
    check_positive_int(rows, "rows")
    check_positive_int(features, "features", minimum=2)
    gen = torch.Generator().manual_seed(seed)
    order = torch.rand(rows, features, generator=gen).argsort(-1)
    mask = torch.ones(rows, features, dtype=dtype)
    mask.scatter_(1, order[:, : features // 2], 0.0)
    return mask


def bottom_half_mask(
    rows: int, image_shape: tuple[int, int], *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Every image (flattened row-major) hides its bottom half of pixel rows."""
    check_positive_int(rows, "rows")
    height, width = image_shape
    if height < 2:
        raise InputError(f"an image needs at least 2 pixel rows to hide the bottom half, got {image_shape}")
    image = torch.ones(height, width, dtype=dtype)
    image[height - height // 2 :] = 0
    return image.reshape(1, -1).expand(rows, -1).clone()
