"""One optimization step, shared by :func:`~pyro_vae.train.fit` and the benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def train_step(
    loss: Any,
    optimizer: torch.optim.Optimizer,
    model: Callable,
    guide: Callable,
    batch: tuple[torch.Tensor, ...],
    kwargs: dict[str, Any],
) -> float:
    """``loss.loss_and_grads`` then an optimizer step; returns the loss (a float).

    A non-finite loss is returned without stepping, so the parameters stay as they were.
    """
    value = loss.loss_and_grads(model, guide, *batch, **kwargs)
    if value == value and abs(value) != float("inf"):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return value
