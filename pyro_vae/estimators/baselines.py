"""Control variates for score-function gradients: a decaying average and an NVIL network."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from torch import nn

from pyro_vae._checks import check_widths
from pyro_vae.errors import InputError


class Baseline(nn.Module):
    """A baseline :math:`b` subtracted from the learning signal :math:`\\ell = \\log p(x, z) -
    \\log q(z \\mid x)` of the score-function term :math:`(\\ell - b)\\, \\nabla_\\phi \\log q(z \\mid x)`.

    The estimator stays unbiased as long as :math:`b` does not depend on the sample :math:`z`
    whose score it multiplies, since :math:`E_q[\\nabla_\\phi \\log q] = 0` [1].
    Subclasses implement :meth:`forward`, returning the baseline (broadcastable to the
    signal's ``(K, B)``) and a loss that trains the baseline's own parameters.

    References:
        [1] Williams (1992), "Simple statistical gradient-following algorithms for
        connectionist reinforcement learning", Machine Learning 8.
    """

    def forward(self, signal: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what was learned: running averages and network weights start afresh."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()


class DecayingAverageBaseline(Baseline):
    """:math:`b_t = \\beta b_{t-1} + (1 - \\beta)\\, \\bar\\ell_{t-1}`, a running mean of the
    batch-averaged learning signal (as in Pyro's decaying-average baseline, but one scalar
    per estimator, so minibatches of any size work).

    The value used at step :math:`t` is computed from earlier steps only, so the estimator
    stays unbiased. The running mean is a buffer: it is in ``state_dict()`` and starts
    from the first batch's mean.

    :param beta: decay :math:`\\beta \\in [0, 1)`.
    """

    def __init__(self, *, beta: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= beta < 1.0:
            raise InputError(f"beta must lie in [0, 1), got {beta}")
        self.beta = beta
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))  # float64 whatever the data
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def reset(self) -> None:
        self.mean.zero_()
        self.count.zero_()

    def forward(self, signal: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        signal = signal.detach()
        if self.mean.device != signal.device:
            self.mean, self.count = self.mean.to(signal.device), self.count.to(signal.device)
        batch_mean = signal.mean().to(self.mean)
        baseline = (
            self.mean.to(signal)
            if self.count > 0
            else torch.zeros((), dtype=signal.dtype, device=signal.device)
        )
        with torch.no_grad():
            if self.count == 0:
                self.mean.copy_(batch_mean)
            else:
                self.mean.mul_(self.beta).add_((1 - self.beta) * batch_mean)
            self.count += 1
        return baseline, 0.0


class NeuralBaseline(Baseline):
    """NVIL's input-dependent baseline [1]: :math:`b(x) = c + b_\\psi(x)`, a decaying
    average :math:`c` of the signal plus an MLP of the datapoint, trained to minimize
    :math:`E[(\\ell - c - b_\\psi(x))^2]`.

    The network sees the first data argument of the program (``x``, rows of the data plate,
    flattened); its input width is inferred at the first call. It is registered in Pyro's
    parameter store as ``pyro.module(name, ...)``, so :func:`~pyro_vae.train.fit` and SVI
    optimize it along with the model. Mnih & Gregor also divide the signal by a running
    standard deviation; that rescales the score term against the pathwise terms, so the
    gradient is no longer an unbiased estimate of the ELBO gradient, and it is left out here.

    :param hidden: widths of the baseline network's hidden layers.
    :param beta: decay of the average :math:`c`.
    :param name: its name in the parameter store.

    References:
        [1] Mnih & Gregor (2014), "Neural variational inference and learning in belief
        networks", ICML.
    """

    def __init__(self, *, hidden: Sequence[int] = (100,), beta: float = 0.9, name: str = "nvil_baseline"):
        super().__init__()
        check_widths(hidden, allow_empty=True)
        self.name = name
        self.average = DecayingAverageBaseline(beta=beta)
        layers: list[nn.Module] = []
        for i, h in enumerate(hidden):
            layers += [nn.LazyLinear(h) if i == 0 else nn.Linear(hidden[i - 1], h), nn.Tanh()]
        layers.append(nn.LazyLinear(1) if not hidden else nn.Linear(hidden[-1], 1))
        self.net = nn.Sequential(*layers)

    def reset(self) -> None:
        self.average.reset()
        super().reset()

    def forward(self, signal: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        signal = signal.detach()
        c, _ = self.average(signal, x)
        inputs = x.detach().reshape(x.shape[0], -1)
        if any(isinstance(m, nn.modules.lazy.LazyModuleMixin) for m in self.net.modules()):
            self.net.to(inputs)
            with torch.no_grad():
                self.net(inputs)
        pyro.module(self.name, self.net)
        b = c + self.net(inputs.to(next(self.net.parameters()))).squeeze(-1)  # (B,)
        if b.shape[-1] != signal.shape[-1]:
            raise InputError(
                f"the baseline network got {inputs.shape[0]} rows but the data plate has "
                f"{signal.shape[-1]}; NeuralBaseline reads the program's first argument as the data"
            )
        loss = ((signal - b) ** 2).mean(0).sum()
        return b.detach(), loss
