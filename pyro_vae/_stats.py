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


class RunningMoments:
    """Mean and variance along dim 0 of samples that arrive in chunks ``(k, ...)``, without
    keeping them: Chan et al.'s pairwise update [1], stable where the sum of squares is not
    (log-weights of hundreds of nats in float32).

    References:
        [1] Chan, Golub & LeVeque (1983), "Algorithms for computing the sample variance:
        analysis and recommendations", The American Statistician 37(3).
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def add(self, chunk: torch.Tensor) -> None:
        k = chunk.shape[0]
        mean = chunk.mean(0)
        m2 = ((chunk - mean) ** 2).sum(0)
        if self._mean is None or self._m2 is None:
            self.count, self._mean, self._m2 = k, mean, m2
            return
        total = self.count + k
        delta = mean - self._mean
        self._mean = self._mean + delta * (k / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * k / total)
        self.count = total

    @property
    def mean(self) -> torch.Tensor:
        assert self._mean is not None, "no samples added"
        return self._mean

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased variance of one sample (NaN for a single sample)."""
        assert self._m2 is not None, "no samples added"
        if self.count < 2:
            return torch.full_like(self._m2, math.nan)
        return self._m2 / (self.count - 1)

    @property
    def standard_error(self) -> torch.Tensor:
        """Standard error of :attr:`mean`."""
        return (self.variance / self.count).sqrt()
