"""One optimization step, shared by :func:`~pyro_vae.train.fit` and the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch


def train_step(
    loss: Any,
    optimizer: torch.optim.Optimizer,
    model: Callable,
    guide: Callable,
    batch: tuple[torch.Tensor, ...],
    kwargs: dict[str, Any],
    *,
    auxiliary: Sequence[tuple[Any, Callable, Callable, dict[str, Any]]] = (),
    before_step: Callable[[float], float] | None = None,
) -> float:
    """``loss.loss_and_grads`` (plus that of every ``(loss, model, guide, kwargs)`` in
    ``auxiliary``, whose gradients add up) then an optimizer step; returns the summed loss (a float).

    A non-finite loss is returned without stepping, so the parameters stay as they were.
    ``before_step(loss)``, called once the gradients are in, may change them and returns the
    loss the step is judged by (data-parallel training all-reduces both there).
    """
    value = loss.loss_and_grads(model, guide, *batch, **kwargs)
    for aux_loss, aux_model, aux_guide, aux_kwargs in auxiliary:
        value += aux_loss.loss_and_grads(aux_model, aux_guide, *batch, **aux_kwargs)
    if before_step is not None:
        value = before_step(value)
    if math.isfinite(value):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return value
