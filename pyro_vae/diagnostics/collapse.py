"""Posterior-collapse diagnostics: active units and the KL per latent dimension."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from torch.distributions import Independent, kl_divergence

from pyro_vae.errors import InputError


def _site(trace: poutine.Trace, site: str, what: str) -> dict:
    if site not in trace.nodes or trace.nodes[site]["type"] != "sample":
        raise InputError(f"the {what} has no sample site '{site}'")
    return trace.nodes[site]


def _base(fn: Any) -> Any:
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn


@torch.no_grad()
def posterior_means(guide: Callable, *args: Any, site: str = "z", **kwargs: Any) -> torch.Tensor:
    """:math:`E_{q(z \\mid x_n)}[z]` for every datapoint, from the guide's distribution at ``site``."""
    with poutine.block():
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    return _site(trace, site, "guide")["fn"].mean


@dataclass(frozen=True)
class ActiveUnits:
    """``variance[j]`` :math:`= \\mathrm{Var}_x(E_q[z_j \\mid x])`; ``active = variance > threshold``."""

    variance: torch.Tensor
    threshold: float

    @property
    def active(self) -> torch.Tensor:
        return self.variance > self.threshold

    @property
    def count(self) -> int:
        return int(self.active.sum())


def active_units(
    guide: Callable, *args: Any, site: str = "z", threshold: float = 0.01, **kwargs: Any
) -> ActiveUnits:
    """Active units [1]: latent dimension :math:`j` is active when
    :math:`A_j = \\mathrm{Cov}_x(E_{q(z \\mid x)}[z_j]) > 0.01`, i.e. the encoder's mean moves with
    the input; an inactive dimension carries no information about :math:`x` (collapse).

    References:
        [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """
    means = posterior_means(guide, *args, site=site, **kwargs)
    return ActiveUnits(variance=means.reshape(-1, means.shape[-1]).var(0), threshold=threshold)


@torch.no_grad()
def kl_per_dimension(
    model: Callable, guide: Callable, *args: Any, site: str = "z", **kwargs: Any
) -> torch.Tensor:
    """:math:`\\frac1N \\sum_n \\mathrm{KL}(q(z_j \\mid x_n) \\,\\|\\, p(z_j))` per latent dimension
    :math:`j`, in closed form; needs a factorized guide and prior at ``site`` (e.g. diagonal
    Gaussians). A dimension with KL near 0 for all :math:`x` has collapsed to the prior [1].

    References:
        [1] Bowman et al. (2016), "Generating sentences from a continuous space", CoNLL.
    """
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    q = _base(_site(guide_trace, site, "guide")["fn"])
    p = _base(_site(model_trace, site, "model")["fn"])
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError as e:
        raise InputError(
            f"no closed-form KL between {type(q).__name__} and {type(p).__name__} at '{site}'"
        ) from e
    if kl.dim() < 1:
        raise InputError(f"site '{site}' has no latent dimension to split the KL over")
    return kl.reshape(-1, kl.shape[-1]).mean(0)
