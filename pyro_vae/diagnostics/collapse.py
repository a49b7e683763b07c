"""Posterior-collapse diagnostics: active units and the KL per latent dimension."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import Independent, kl_divergence

from pyro_vae.errors import InputError
from pyro_vae.infer.modes import frozen_evaluation
from pyro_vae.infer.particles import forked_rng, record, record_program
from pyro_vae.infer.sites import Site


def _site(sites: dict[str, Site], name: str, what: str) -> Site:
    site = sites.get(name)
    if site is None or site.is_observed:
        raise InputError(f"the {what} has no latent sample site '{name}'")
    return site


def _base(fn: Any) -> Any:
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn


def posterior_means(guide: Callable, *args: Any, site: str = "z", **kwargs: Any) -> torch.Tensor:
    """:math:`E_{q(z \\mid x_n)}[z]` for every datapoint, from the guide's distribution at ``site``
    (one run with modules in eval mode; the random number generators are left as they were).
    In a guide where ``site`` depends on an earlier discrete draw (M2's :math:`z` given
    :math:`y`), this is the mean given that one draw."""
    with forked_rng(args), frozen_evaluation():
        sites = record_program(guide, args, kwargs).sites
    return _site(sites, site, "guide").fn.mean


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


def kl_per_dimension(
    model: Callable, guide: Callable, *args: Any, site: str = "z", **kwargs: Any
) -> torch.Tensor:
    """:math:`\\frac1N \\sum_n \\mathrm{KL}(q(z_j \\mid x_n) \\,\\|\\, p(z_j))` per latent dimension
    :math:`j`, in closed form; needs a factorized guide and prior at ``site`` (e.g. diagonal
    Gaussians). A dimension with KL near 0 for all :math:`x` has collapsed to the prior [1].
    One run with modules in eval mode; the random number generators are left as they were.

    References:
        [1] Bowman et al. (2016), "Generating sentences from a continuous space", CoNLL.
    """
    with forked_rng(args), frozen_evaluation():
        model_sites, guide_sites = record(model, guide, args, kwargs)
    q = _base(_site(guide_sites, site, "guide").fn)
    p = _base(_site(model_sites, site, "model").fn)
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError as e:
        raise InputError(
            f"no closed-form KL between {type(q).__name__} and {type(p).__name__} at '{site}'"
        ) from e
    if kl.dim() < 1:
        raise InputError(f"site '{site}' has no latent dimension to split the KL over")
    return kl.reshape(-1, kl.shape[-1]).mean(0)
