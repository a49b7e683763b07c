"""The default optimizer of :func:`~pyro_vae.train.fit`: one Adam over all parameters, fused."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_vae.train.fused_adam import FusedAdam

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
    """``torch.optim.Adam(params, lr=lr)`` [1] with PyTorch's fused kernel where the parameters
    allow it (:class:`~pyro_vae.train.fused_adam.FusedAdam`, which gives the update).

    The fused kernel does the update in one pass over each tensor (the for-loop implementation,
    PyTorch's default on CPU, makes about ten passes of separate operations); it is the same
    update to float rounding (tested against the for-loop one) and about a fifth of the
    default training step on the benchmark VAE (``benchmarks/train_step.py``).
    :class:`~pyro_vae.train.fused_adam.FusedAdam` calls it with less of the general
    optimizer's Python around it (bitwise ``torch.optim.Adam(fused=True)``). Parameters
    that the kernel does not take (several devices, a device type it does not support) get
    PyTorch's default implementation. Groups added later (``add_param_group``) inherit the
    choice.

    References:
        [1] Kingma & Ba (2015), "Adam: a method for stochastic optimization", ICLR.
    """
    params = list(params)
    if can_fuse(params):
        return FusedAdam(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)
