"""Hiding labels for semi-supervised learning."""

from __future__ import annotations

import torch

from pyro_vae._checks import check_positive_int
from pyro_vae.conventions import UNLABELLED
from pyro_vae.errors import InputError

__all__ = ["UNLABELLED", "hide_labels"]


def hide_labels(y: torch.Tensor, num_labelled: int, *, num_classes: int, seed: int = 0) -> torch.Tensor:
    """A copy of the integer labels ``y`` with all but ``num_labelled`` set to -1, keeping
    the same number per class (``num_labelled / num_classes`` each, chosen at random with
    a generator seeded by ``seed``), as in Kingma et al.'s semi-supervised benchmarks."""
    check_positive_int(num_labelled, "number of labelled points")
    if y.dim() != 1 or torch.is_floating_point(y):
        raise InputError(
            f"labels must be a 1-d integer tensor, got shape {tuple(y.shape)} and dtype {y.dtype}"
        )
    if num_labelled % num_classes:
        raise InputError(
            f"the number of labelled points ({num_labelled}) must be a multiple of the number of classes "
            f"({num_classes}) to keep the classes balanced"
        )
    per_class = num_labelled // num_classes
    gen = torch.Generator().manual_seed(seed)
    out = torch.full_like(y, UNLABELLED)
    for c in range(num_classes):
        rows = (y == c).nonzero().flatten().cpu()
        if len(rows) < per_class:
            raise InputError(f"class {c} has {len(rows)} points, fewer than the {per_class} to keep labelled")
        keep = rows[torch.randperm(len(rows), generator=gen)[:per_class]].to(y.device)
        out[keep] = c
    return out
