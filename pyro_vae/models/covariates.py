"""Feeding a covariate to a network: its one-hot code appended to the network's input."""

from __future__ import annotations

import torch


def append_covariate(h: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """``h`` with the covariate's code ``(B, C)`` appended on the last dim, broadcast over
    the leading (particle) dims of ``h``: shape ``(..., B, D + C)``."""
    return torch.cat([h, code.expand(*h.shape[:-1], code.shape[-1])], dim=-1)
