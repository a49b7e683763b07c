"""The weight of a latent site's terms in the objective (beta-VAE, KL warm-up)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from pyro import poutine


def kl_scale(factor: float) -> AbstractContextManager:
    """Weight of the latent site's terms: ``poutine.scale``, a mask for weight 0, nothing for 1."""
    if factor == 1.0:
        return nullcontext()
    return poutine.mask(mask=False) if factor == 0 else poutine.scale(scale=factor)
