"""Posterior-collapse diagnostics: active units and the KL per latent dimension."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import Distribution, Independent, kl_divergence

from pyro_vae._checks import check_positive_int, check_rows
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
    return _site_means(guide, args, kwargs, (site,), num_samples=1)[site]


def _mean_of(site: Site, num_samples: int) -> torch.Tensor:
    """The site's conditional mean, or (when averaging several draws) its drawn value."""
    try:
        return site.fn.mean
    except NotImplementedError:
        if num_samples > 1:
            return site.value
        raise InputError(
            f"the guide's distribution at '{site.name}' ({type(site.fn).__name__}) has no closed-form "
            "mean; pass num_samples > 1 to average draws instead"
        ) from None


def _site_means(
    guide: Callable, args: tuple, kwargs: dict, names: tuple[str, ...] | None, *, num_samples: int
) -> dict[str, torch.Tensor]:
    """:math:`E_q[z_s \\mid x_n]` per named latent site (all latent sites for ``None``), averaged
    over ``num_samples`` guide runs: see :func:`_site_mean_draws`."""
    return {
        name: draws.mean(0)
        for name, draws in _site_mean_draws(guide, args, kwargs, names, num_samples).items()
    }


def _site_mean_draws(
    guide: Callable, args: tuple, kwargs: dict, names: tuple[str, ...] | None, num_samples: int
) -> dict[str, torch.Tensor]:
    """Each named latent site's conditional mean (or draw) in each of ``num_samples`` guide
    runs, ``(S, N, latent dimensions)``: in one probing context (eval mode, generators restored)."""
    check_rows(args)
    check_positive_int(num_samples, "num_samples")
    rows = num_rows(args)
    draws: dict[str, list[torch.Tensor]] = {}
    with probing(args):
        for _ in range(num_samples):
            sites = record_program(guide, args, kwargs).sites
            for name in names if names is not None else _latent_names(sites):
                latent = _site(sites, name, "guide")
                draws.setdefault(name, []).append(
                    _per_datapoint(_mean_of(latent, num_samples), latent, rows, "posterior means")
                )
    return {name: torch.stack(values) for name, values in draws.items()}


def _latent_names(sites: dict[str, Site]) -> tuple[str, ...]:
    return tuple(n for n, s in sites.items() if not s.is_observed)


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
    return _active(posterior_means(guide, *args, site=site, **kwargs), threshold)


def _active(means: torch.Tensor, threshold: float) -> ActiveUnits:
    if means.shape[0] < 2:
        raise InputError("active units need at least two datapoints (a variance over the data)")
    return ActiveUnits(variance=means.var(0), threshold=threshold)


def active_units_per_site(
    guide: Callable,
    *args: Any,
    sites: Sequence[str] | None = None,
    threshold: float = 0.01,
    num_samples: int = 1,
    **kwargs: Any,
) -> dict[str, ActiveUnits]:
    """:func:`active_units` of every latent site of the guide (or of ``sites``), e.g. each
    stochastic layer of a :class:`~pyro_vae.models.HierarchicalVAE`, from the bottom up.

    In a guide where a site depends on earlier draws (layer :math:`z_2` given :math:`z_1`),
    :math:`E_q[z_2 \\mid x] = E_{q(z_1 \\mid x)} E_q[z_2 \\mid z_1]` is estimated by averaging
    the site's conditional mean over :math:`S` = ``num_samples`` guide runs (for a site without
    a closed-form mean, a flow posterior, the draws themselves), :math:`\\hat m_n`. Its noise
    would add :math:`\\overline{s^2}/S` to the variance over the data (:math:`s_n^2` the
    unbiased variance of the :math:`S` values of datapoint :math:`n`), so that is subtracted:

    .. math::
        \\hat A_j = \\max\\Big(0,\\ \\widehat{\\mathrm{Var}}_n(\\hat m_{nj})
        - \\frac1{NS}\\sum_n s_{nj}^2\\Big),

    unbiased before the clamp at 0. Sites that depend on no draw are exact with :math:`S = 1`."""
    names = None if sites is None else tuple(sites)
    out = {}
    for name, draws in _site_mean_draws(guide, args, kwargs, names, num_samples).items():
        unit = _active(draws.mean(0), threshold)
        if num_samples > 1:
            noise = draws.var(0).mean(0) / num_samples
            unit = ActiveUnits(variance=(unit.variance - noise).clamp(min=0), threshold=threshold)
        out[name] = unit
    return out


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
    return kl_per_site(model, guide, *args, sites=(site,), **kwargs)[site]


def kl_per_site(
    model: Callable, guide: Callable, *args: Any, sites: Sequence[str] | None = None, **kwargs: Any
) -> dict[str, torch.Tensor]:
    """:func:`kl_per_dimension` of every latent site of the guide (or of ``sites``), from one
    run: for a :class:`~pyro_vae.models.HierarchicalVAE`, the KL of each stochastic layer per
    dimension, :math:`\\mathrm{KL}(q(z_{l,j} \\mid \\cdot) \\| p(z_{l,j} \\mid z_{l+1}))`. Each
    site's two conditionals are taken at the run's draw of their parents, so for a layer whose
    model parent is drawn after it in the guide (:math:`z_1` given a :math:`z_2 \\sim q(z_2
    \\mid z_1)`) the value is at one draw of that parent (a collapse diagnostic; the layer's
    term of the ELBO is :math:`E_q[\\log q - \\log p]`, see ``rate`` of
    :func:`pyro_vae.infer.log_terms`). Sites in the order of the guide."""
    check_rows(args)
    with probing(args):
        model_sites, guide_sites = record(model, guide, args, kwargs)
    rows = num_rows(args)
    out: dict[str, torch.Tensor] = {}
    for name in sites if sites is not None else _latent_names(guide_sites):
        q = _site(guide_sites, name, "guide")
        p = _site(model_sites, name, "model")
        kl = _factorized_kl(q.fn, p.fn, name)
        out[name] = _per_datapoint(kl, q, rows, "KL per dimension").mean(0)
    return out
