"""The log-mean-exp of log-weights over particles: in one piece, or streamed in chunks."""

from __future__ import annotations

import math

import torch


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """:math:`\\log \\frac1K \\sum_k \\exp \\ell_k` along ``dim`` (:math:`K` its size), stably."""
    return log_w.logsumexp(dim) - math.log(log_w.shape[dim])


class StreamingLogMeanExp:
    """:math:`\\log \\frac1K \\sum_k w_k` and the spread of the weights, per datapoint, from
    chunks of log-weights of shape ``(k, B)``; memory does not grow with :math:`K`.

    The standard error of :math:`\\log \\hat p` is the delta-method
    :math:`\\mathrm{sd}(w) / (\\sqrt K\\, \\bar w)`, computed from weights scaled by their running
    maximum.
    """

    def __init__(self) -> None:
        self.max: torch.Tensor | None = None
        self.s1: torch.Tensor | None = None  # sum_k exp(lw - max)
        self.s2: torch.Tensor | None = None  # sum_k exp(2 (lw - max))
        self.count = 0

    def add(self, lw: torch.Tensor) -> None:
        chunk_max = lw.max(0).values
        if self.max is None or self.s1 is None or self.s2 is None:
            self.max = chunk_max
            self.s1 = torch.zeros_like(chunk_max)
            self.s2 = torch.zeros_like(chunk_max)
        else:
            new = torch.maximum(self.max, chunk_max)
            shift = torch.exp(self.max - new)
            self.s1, self.s2, self.max = self.s1 * shift, self.s2 * shift**2, new
        w = torch.exp(lw - self.max)
        self.s1 = self.s1 + w.sum(0)
        self.s2 = self.s2 + (w**2).sum(0)
        self.count += lw.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(value, standard error)`` per datapoint (the error is NaN for one particle)."""
        assert self.max is not None and self.s1 is not None and self.s2 is not None
        k = self.count
        mean_w = self.s1 / k
        value = self.max + mean_w.log()
        if k < 2:
            return value, torch.full_like(value, math.nan)
        var_w = (self.s2 / k - mean_w**2).clamp_min(0) * k / (k - 1)
        return value, var_w.sqrt() / (mean_w * math.sqrt(k))
