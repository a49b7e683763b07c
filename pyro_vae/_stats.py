"""Data-set means of per-datapoint estimates, with the standard error of the mean."""

from __future__ import annotations

import math

import torch


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean over datapoints and its standard error ``std / sqrt(n)`` (NaN for one point)."""
    n = values.shape[0]
    return values.mean().item(), (values.std() / n**0.5).item() if n > 1 else math.nan


def summarize(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{"num_data": n, name: mean, name_se: se, ...}`` for per-datapoint tensors."""
    out: dict[str, float] = {"num_data": next(iter(values.values())).shape[0]}
    for name, v in values.items():
        out[name], out[f"{name}_se"] = mean_and_se(v)
    return out
