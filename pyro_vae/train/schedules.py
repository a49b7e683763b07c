"""Schedules for the KL weight during training."""

from __future__ import annotations

from dataclasses import dataclass

from pyro_vae._checks import check_nonnegative


@dataclass(frozen=True)
class KLWarmup:
    """Linear KL warm-up (annealing) [1, 2]: the weight on the KL term rises from
    ``start`` to 1 over the first ``epochs`` epochs, updated every step:

    .. math:: w(t) = \\min\\bigl(1, w_0 + (1 - w_0)\\, t / T\\bigr),

    with :math:`t` the (fractional) epoch. The model multiplies its :math:`\\beta` by
    :math:`w(t)`; with :math:`w < 1` the objective is not the ELBO, so training curves
    report the ELBO itself separately.

    References:
        [1] Bowman et al. (2016), "Generating sentences from a continuous space", CoNLL.
        [2] Sønderby et al. (2016), "Ladder variational autoencoders", NeurIPS.
    """

    epochs: float
    start: float = 0.0

    def __post_init__(self) -> None:
        check_nonnegative(self.epochs, "warm-up epochs")
        check_nonnegative(self.start, "warm-up start")
        if self.start > 1:
            raise ValueError(f"warm-up start must be in [0, 1], got {self.start}")

    def __call__(self, epoch: float) -> float:
        if self.epochs == 0:
            return 1.0
        return min(1.0, self.start + (1.0 - self.start) * epoch / self.epochs)
