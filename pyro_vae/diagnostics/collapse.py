"""Posterior-collapse diagnostics: active units and the KL per latent dimension."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import Distribution, Independent, kl_divergence

from pyro_vae._checks import check_rows
from pyro_vae.errors import InputError
from pyro_vae.infer.layout import find_layout
from pyro_vae.infer.particles import probing, record, record_program
from pyro_vae.infer.per_datapoint import num_rows
from pyro_vae.infer.sites import Site


def _site(sites: dict[str, Site], name: str, what: str) -> Site:
    site = sites.get(name)
    if site is None or site.is_observed:
        latent = [n for n, s in sites.items() if not s.is_observed]
        raise InputError(
            f"the {what} has no latent sample site '{name}'; its latent sites are {latent}: pass site="
        )
    return site


def _base(fn: Any) -> Any:
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn


def _per_datapoint(values: torch.Tensor, site: Site, rows: int, what: str) -> torch.Tensor:
    """``values`` of shape ``batch + event`` of ``site`` as ``(datapoints, latent dimensions)``:
    the data plate's axis first, every other axis (inner plates, the event) flattened."""
    layout, error = find_layout(
        [site], plate_name=None, nesting=max((-f.dim for f in site.frames if f.dim), default=0), rows=rows
    )
    if layout.data_dim is None:
        raise InputError(f"{what}: the latent site '{site.name}' is in no plate of size {rows}: {error}")
    batch = tuple(site.fn.batch_shape)
    full = values.expand(batch + tuple(site.fn.event_shape))
    axis = len(batch) + layout.data_dim
    return full.movedim(axis, 0).reshape(rows, -1)


def posterior_means(guide: Callable, *args: Any, site: str = "z", **kwargs: Any) -> torch.Tensor:
    """:math:`E_{q(z \\mid x_n)}[z]` for every datapoint, ``(N, latent dimensions)``: the data
    plate first, the site's other batch dims and event flattened (a scalar latent has one
    dimension). One run of the guide with modules in eval mode; the random number
    generators are left as they were. In a guide where ``site`` depends on an earlier
    discrete draw (M2's :math:`z` given :math:`y`), this is the mean given that one draw."""
    check_rows(args)
    with probing(args):
        sites = record_program(guide, args, kwargs).sites
    latent = _site(sites, site, "guide")
    return _per_datapoint(latent.fn.mean, latent, num_rows(args), "posterior means")


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
    Needs at least two datapoints.

    References:
        [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """
    means = posterior_means(guide, *args, site=site, **kwargs)
    if means.shape[0] < 2:
        raise InputError("active units need at least two datapoints (a variance over the data)")
    return ActiveUnits(variance=means.var(0), threshold=threshold)


def _factorized_kl(q: Distribution, p: Distribution, name: str) -> torch.Tensor:
    base_q, base_p = _base(q), _base(p)
    for fn in (base_q, base_p):
        if tuple(fn.event_shape):
            raise InputError(
                f"the KL at '{name}' does not split into dimensions: {type(fn).__name__} is not "
                "factorized over its event (its KL per datapoint is the rate)"
            )
    try:
        return kl_divergence(base_q, base_p)
    except NotImplementedError as e:
        raise InputError(
            f"no closed-form KL between {type(base_q).__name__} and {type(base_p).__name__} at '{name}'"
        ) from e


def kl_per_dimension(
    model: Callable, guide: Callable, *args: Any, site: str = "z", **kwargs: Any
) -> torch.Tensor:
    """:math:`\\frac1N \\sum_n \\mathrm{KL}(q(z_j \\mid x_n) \\,\\|\\, p(z_j))` per latent dimension
    :math:`j`, in closed form; needs a factorized guide and prior at ``site`` (e.g. diagonal
    Gaussians; a scalar latent has one dimension). A dimension with KL near 0 for all
    :math:`x` has collapsed to the prior [1]. One run with modules in eval mode; the random
    number generators are left as they were.

    References:
        [1] Bowman et al. (2016), "Generating sentences from a continuous space", CoNLL.
    """
    check_rows(args)
    with probing(args):
        model_sites, guide_sites = record(model, guide, args, kwargs)
    q = _site(guide_sites, site, "guide")
    p = _site(model_sites, site, "model")
    kl = _factorized_kl(q.fn, p.fn, site)
    return _per_datapoint(kl, q, num_rows(args), "KL per dimension").mean(0)
