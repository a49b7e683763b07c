"""The default optimizer of :func:`~pyro_vae.train.fit`: one Adam over all parameters, fused."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_FUSED_DEVICES = ("cpu", "cuda")


def can_fuse(params: Sequence[torch.Tensor]) -> bool:
    """Whether PyTorch's fused Adam kernel takes ``params``: floating-point tensors, all on one
    device of a type the kernel supports (CPU or CUDA)."""
    if not params:
        return False
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in _FUSED_DEVICES
        and all(p.is_floating_point() for p in params)
    )


def default_optimizer(params: Sequence[torch.Tensor], *, lr: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam(params, lr=lr)`` with ``fused=True`` where the parameters allow it.

    Adam [1] updates each parameter :math:`\\theta` with gradient :math:`g` at step :math:`t` by

    .. math::
        m \\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\quad
        v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2, \\quad
        \\theta \\leftarrow \\theta - \\frac{\\mathrm{lr}}{1 - \\beta_1^t}
        \\frac{m}{\\sqrt{v / (1 - \\beta_2^t)} + \\epsilon}.

    The fused kernel does this in one pass over each tensor (the for-loop implementation,
    PyTorch's default on CPU, makes about ten passes of separate operations); it is the same
    update to float rounding (tested against the for-loop one) and about a fifth of the
    default training step on the benchmark VAE (``benchmarks/train_step.py``). Parameters
    that the kernel does not take (several devices, a device type it does not support) get
    PyTorch's default implementation. Groups added later (``add_param_group``) inherit the
    choice.

    References:
        [1] Kingma & Ba (2015), "Adam: a method for stochastic optimization", ICLR.
    """
    params = list(params)
    if can_fuse(params):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)
