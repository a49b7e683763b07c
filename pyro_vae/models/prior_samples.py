"""Draws from a model's top-level prior, for ``sample_prior``."""

from __future__ import annotations

import torch
from torch import nn


def draw_prior(model: nn.Module, num_samples: int, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """``num_samples`` draws of :math:`z \\sim p(z)` from ``model.prior``, with the dtype and
    device of ``like`` (default: of the model's first parameter)."""
    ref = like if like is not None else next(model.parameters())
    return model.prior(ref).sample((num_samples,))
