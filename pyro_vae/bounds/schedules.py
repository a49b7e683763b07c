"""Annealing schedules :math:`0 = \\beta_0 < \\beta_1 < \\dots < \\beta_T = 1` for annealed
importance sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LinearSchedule:
    """:math:`\\beta_t = t / T`."""

    def betas(self, num_steps: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The ``num_steps + 1`` values :math:`\\beta_0, \\dots, \\beta_T`."""
        return torch.linspace(0.0, 1.0, num_steps + 1, dtype=dtype, device=device)


@dataclass(frozen=True)
class SigmoidSchedule:
    """The sigmoidal schedule of [1, 2]: with :math:`\\tilde\\beta_t = \\sigma(\\delta(2t/T - 1))`,
    :math:`\\beta_t = (\\tilde\\beta_t - \\tilde\\beta_0) / (\\tilde\\beta_T - \\tilde\\beta_0)`:
    smaller steps near both ends of the path, where the log-weight increments vary most.

    References:
        [1] Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using
            bidirectional Monte Carlo", arXiv:1511.02543.
        [2] Wu, Burda, Salakhutdinov & Grosse (2017), "On the quantitative analysis of
            decoder-based generative models", ICLR.
    """

    delta: float = 4.0

    def betas(self, num_steps: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        t = torch.linspace(-self.delta, self.delta, num_steps + 1, dtype=dtype, device=device)
        s = torch.sigmoid(t)
        return (s - s[0]) / (s[-1] - s[0])
