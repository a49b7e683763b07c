"""Static and dynamic binarization of grey-level data in [0, 1]."""

from __future__ import annotations

import torch

from pyro_vae.errors import InputError


def _check_unit_interval(x: torch.Tensor) -> None:
    if (x < 0).any() or (x > 1).any():
        raise InputError("binarization needs values in [0, 1]")


def binarize(x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Static stochastic binarization [1]: one draw :math:`b \\sim \\mathrm{Bernoulli}(x)`,
    fixed by ``seed``, used for the whole of training and evaluation.

    References:
        [1] Salakhutdinov & Murray (2008), "On the quantitative analysis of deep belief
        networks", ICML.
    """
    _check_unit_interval(x)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return (torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) < x).to(x.dtype)


class DynamicBinarization:
    """A minibatch transform for :func:`~pyro_vae.train.fit`: a fresh Bernoulli draw of the
    grey levels every time a datapoint is used (the regularizing "dynamic" binarization of
    IWAE [1]). It uses the global torch RNG, which ``fit`` seeds and checkpoints, so runs stay
    reproducible and resumable.

    References:
        [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """

    def __call__(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x, *rest = batch
        return (torch.bernoulli(x), *rest)
