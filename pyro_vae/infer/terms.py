"""Per-datapoint log densities of a particle run: what every bound, estimator and metric reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro.distributions.util import scale_and_mask
from torch.distributions import kl_divergence

from pyro_vae.errors import InputError
from pyro_vae.infer.layout import PlateLayout
from pyro_vae.infer.particles import VECTORIZED, ParticleRun
from pyro_vae.infer.sites import Site


@dataclass(frozen=True)
class Terms:
    """Log densities of ``K`` particles for each of ``B`` datapoints, each ``(K, B)``.

    For particles :math:`z^{(k)} \\sim q(z \\mid x_n)`:

    - ``log_likelihood`` :math:`= \\log p(x_n \\mid z^{(k)})`: observed model sites,
      including ``pyro.factor`` s of the model (an unnormalized model's extra factors);
    - ``log_prior`` :math:`= \\log p(z^{(k)})`: latent model sites that the guide proposes.
      A latent of the model that the guide does not sample is proposed by the model itself,
      so its density cancels from the weight and is left out;
    - ``log_guide`` :math:`= \\log q(z^{(k)} \\mid x_n)`: latent guide sites;
    - ``log_guide_score``: the part of ``log_guide`` from sites whose gradient needs a
      score-function term (no ``rsample``, no relaxed value); ``None`` if there is none;
    - ``extra``: terms of the *training* objective that are not densities of the model or
      the guide: auxiliary model sites (:data:`~pyro_vae.conventions.AUXILIARY`) added, and
      observed guide sites (``pyro.factor`` in the guide) subtracted, as Pyro's
      ``Trace_ELBO`` counts them; ``None`` for evaluation, which leaves them out.

    In a run recorded with ``scaled=True`` each term carries its site's scale relative to
    the data plate's :math:`N / B` (``poutine.scale``, a KL weight), and ``data_scale`` is
    :math:`N / B`; unscaled terms are those of the true model.

    :ivar global_weight: ``(K,)`` sum of the terms of sites outside the data plate (global
        latents, model-level factors), with their full scale; ``None`` if there are none.
    :ivar global_sites: their names (per-datapoint evaluation refuses them).
    :ivar mode: how the particles were drawn (``"vectorized"``, ``"sequential"``, ``"single"``).
    """

    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    log_guide: torch.Tensor
    log_guide_score: torch.Tensor | None = None
    extra: torch.Tensor | None = None
    global_weight: torch.Tensor | None = None
    global_sites: tuple[str, ...] = ()
    data_scale: float = 1.0
    mode: str = "single"
    args: tuple = ()
    """The run's positional arguments, for estimators whose control variates read the data."""
    per_datapoint: bool = True
    """``False`` for the totals of :func:`collect_terms` (``totals=True``): one number per
    term, not one per datapoint."""
    total: torch.Tensor | None = None
    """With totals: the batch's training objective, equal to
    ``batch_objective(training_weight().mean(0))``, computed with the fewest operations."""

    @property
    def log_weight(self) -> torch.Tensor:
        """:math:`\\log w = \\log p(x, z) - \\log q(z \\mid x)`."""
        return self.log_likelihood + self.log_prior - self.log_guide

    @property
    def rate(self) -> torch.Tensor:
        """Single-sample estimate of :math:`\\mathrm{KL}(q(z|x) \\| p(z))`: :math:`\\log q - \\log p(z)`."""
        return self.log_guide - self.log_prior

    @property
    def distortion(self) -> torch.Tensor:
        """:math:`-\\log p(x \\mid z)`."""
        return -self.log_likelihood

    @property
    def num_particles(self) -> int:
        return self.log_likelihood.shape[0]

    def training_weight(self) -> torch.Tensor:
        """``log_weight`` plus the extra training terms, ``(K, B)``."""
        return self.log_weight if self.extra is None else self.log_weight + self.extra

    def batch_objective(self, per_datapoint: torch.Tensor) -> torch.Tensor:
        """:math:`\\frac NB \\sum_n` ``per_datapoint`` :math:`+` the global terms averaged over
        particles: the minibatch estimate of a full-data objective."""
        total = self.data_scale * per_datapoint.sum()
        if self.global_weight is not None:
            total = total + self.global_weight.mean()
        return total

    def require_per_datapoint(self) -> None:
        """Refuse terms that are not per-datapoint quantities (global sites, totals)."""
        if not self.per_datapoint:
            raise InputError("these terms are totals over the batch (collect_terms(totals=True))")
        if self.global_sites:
            raise InputError(
                f"sample sites {list(self.global_sites)} are outside the data plate, so their "
                "log-densities are not per-datapoint quantities; per-datapoint bounds need every "
                "sample site inside the data plate (global latents are not supported here)"
            )


def collect_terms(
    run: ParticleRun, *, scaled: bool, analytic_kl: bool = False, totals: bool = False
) -> Terms:
    """The :class:`Terms` of a run, each site's log-density computed once.

    :param scaled: keep site scales (training) rather than the true model's terms
        (evaluation); the extra training terms are only collected when scaled.
    :param analytic_kl: for each latent site whose KL divergence PyTorch registers,
        :math:`-\\mathrm{KL}(q(z_i \\mid \\cdot) \\| p(z_i \\mid \\cdot))` in closed form replaces
        :math:`\\log p(z_i) - \\log q(z_i)` at the sampled value (``log_prior`` then holds
        :math:`-\\mathrm{KL}` and ``log_guide`` leaves the site out). Valid when no latent's
        parents in the model are descendants of it in the guide [1]: a latent drawn in the
        guide before a latent that precedes it in the model has its term sampled.
    :param totals: a fast path for objectives that are sums over datapoints of the particle
        average (the ELBO): each term is the scaled sum over every site and datapoint,
        averaged over particles, one number (shape ``()``) with ``data_scale = 1``, so that
        ``batch_objective(terms.training_weight().mean(0))`` is the same number with fewer
        operations (tested equal to the per-datapoint path). Only with ``scaled``.

    References:
        [1] Pyro documentation, ``pyro.infer.TraceMeanField_ELBO``.
    """
    if totals and not scaled:
        raise ValueError("totals are a training fast path: they need scaled=True")
    if not scaled and run.layout_error is not None:
        raise InputError(run.layout_error)
    k = run.num_particles if run.mode == VECTORIZED else 1
    layout = None if totals else run.layout  # totals need no layout: every site is summed whole
    parts = [_pass_terms(m, g, layout, k, scaled, analytic_kl, totals) for m, g in run.passes]
    if len(parts) == 1:
        fields, names = parts[0]
    else:
        names = parts[0][1]
        if totals:  # numbers, each pass holding one particle: average them
            fields = {
                key: None if parts[0][0][key] is None else sum(p[0][key] for p in parts) / len(parts)
                for key in parts[0][0]
            }
        else:
            fields = {
                key: None if parts[0][0][key] is None else torch.cat([p[0][key] for p in parts], 0)
                for key in parts[0][0]
            }
    return Terms(
        **fields,
        global_sites=names,
        data_scale=run.layout.data_scale if scaled and not totals else 1.0,  # type: ignore[union-attr]
        mode=run.mode,
        args=run.args,
        per_datapoint=not totals,
    )


class _PassSums:
    """Running sums of one pass's terms, each reduced to ``(k, B)`` (sites in the data plate)
    or ``(k,)`` (``global``: sites outside it), with the site scales kept when ``scaled``;
    with ``totals``, each to one number with the sites' whole scales (see :func:`collect_terms`)."""

    KEYS = ("log_likelihood", "log_prior", "log_guide", "log_guide_score", "extra", "global")

    def __init__(self, layout: PlateLayout | None, k: int, scaled: bool, totals: bool = False) -> None:
        self.layout, self.k, self.scaled, self.totals = layout, k, scaled, totals
        self.sums: dict[str, torch.Tensor | None] = dict.fromkeys(self.KEYS)
        self.outside: list[str] = []

    def add(self, key: str, site: Site, lp: torch.Tensor | float, sign: float = 1.0) -> None:
        layout = self.layout
        if self.totals:
            if site.mask is not None:
                lp = scale_and_mask(lp, mask=site.mask)
            value = lp.sum() if isinstance(lp, torch.Tensor) else torch.as_tensor(lp)
            if not _is_one(site.scale, 1.0):  # scale the sum: one multiply of a number
                value = value * site.scale
            current = self.sums[key]
            if sign < 0:
                self.sums[key] = -value if current is None else current - value
            else:
                self.sums[key] = value if current is None else current + value
            return
        if layout.in_data_plate(site):
            if self.scaled and not _is_one(site.scale, layout.data_scale):
                lp = lp * (site.scale / layout.data_scale)
            value = sign * layout.per_datapoint(site, lp, self.k)
        else:
            key = "global"
            if site.name not in self.outside:
                self.outside.append(site.name)
            if self.scaled and not _is_one(site.scale, 1.0):
                lp = lp * site.scale
            value = sign * layout.per_particle(site, lp, self.k)
        current = self.sums[key]
        self.sums[key] = value if current is None else current + value

    def fields(self) -> dict[str, torch.Tensor | None]:
        if self.totals:
            return self._total_fields()
        shape = (self.k, self.layout.size)
        like = next(v for v in self.sums.values() if v is not None)
        zero = torch.zeros((), dtype=like.dtype, device=like.device).expand(shape)
        out: dict[str, torch.Tensor | None] = {}
        for key in ("log_likelihood", "log_prior", "log_guide", "log_guide_score", "extra"):
            value = self.sums[key]
            required = key in ("log_likelihood", "log_prior", "log_guide")
            out[key] = value.expand(shape) if value is not None else zero if required else None
        glob = self.sums["global"]
        out["global_weight"] = None if glob is None else glob.expand(shape[0])
        return out

    def _total_fields(self) -> dict[str, torch.Tensor | None]:
        """Each term as one number: the sum over sites and datapoints, averaged over the ``k``
        particles (a vectorized pass sums all of them); and ``total``, the training objective
        :math:`\\log p + \\mathrm{extra} - \\log q` from the terms present only (fewest operations)."""
        sums = self.sums
        total: torch.Tensor | float = 0.0
        for key in ("log_likelihood", "log_prior", "extra"):
            value = sums[key]
            if value is not None:
                total = value if isinstance(total, float) else total + value
        if sums["log_guide"] is not None:
            total = total - sums["log_guide"]
        like = next(v for v in sums.values() if v is not None)
        zero = torch.zeros((), dtype=like.dtype, device=like.device)
        out: dict[str, torch.Tensor | None] = {"global_weight": None}
        for key in ("log_likelihood", "log_prior", "log_guide", "log_guide_score", "extra"):
            value = sums[key]
            if value is None and key in ("log_likelihood", "log_prior", "log_guide"):
                value = zero
            out[key] = value if value is None or self.k == 1 else value / self.k
        out["total"] = total if self.k == 1 else total / self.k  # type: ignore[assignment]
        return out


def _check_observed_rows(site: Site, layout: PlateLayout) -> None:
    """An observed value whose data-plate length is not the batch's: data bound to the model
    (``pyro.condition``) rather than passed in, which cannot follow the rows of a chunk."""
    if layout.data_dim is None or not layout.in_data_plate(site):
        return
    batch = tuple(site.value.shape[: site.value.dim() - len(site.fn.event_shape)])
    if len(batch) >= -layout.data_dim and batch[layout.data_dim] not in (1, layout.size):
        raise InputError(
            f"observed site '{site.name}' holds {batch[layout.data_dim]} rows but the batch has "
            f"{layout.size}: data bound to the model (pyro.condition) cannot be split into chunks or "
            "minibatches; pass it to the program as an argument and observe it with obs="
        )


def _model_terms(
    sums: _PassSums, model_sites: dict[str, Site], guide_sites: dict[str, Site], analytic_kl: bool
) -> set[str]:
    """Add the model's sites; returns the latents whose KL was taken in closed form."""
    with_kl: set[str] = set()
    ordered = _kl_in_order(model_sites, guide_sites) if analytic_kl else set()
    for name, site in model_sites.items():
        if site.is_observed:
            if not sums.scaled:
                _check_observed_rows(site, sums.layout)
            if not site.auxiliary:
                sums.add("log_likelihood", site, site.log_prob())
            elif sums.scaled:
                sums.add("extra", site, site.log_prob())
            continue
        q = guide_sites.get(name)
        if q is None or q.is_observed:
            continue  # proposed by the model itself: its density cancels from the weight
        if (analytic_kl and name in ordered) or q.relaxed:
            try:
                kl = kl_divergence(q.fn, site.fn)
            except NotImplementedError:
                if q.relaxed:
                    raise InputError(
                        f"guide site '{name}' takes relaxed values, which needs the KL divergence "
                        f"between {type(q.fn).__name__} and {type(site.fn).__name__} in closed form; "
                        "PyTorch registers none"
                    ) from None
            else:
                sums.add("log_prior", q, kl, -1.0)  # the guide site's mask and scale, as TraceMeanField_ELBO
                with_kl.add(name)
                continue
        sums.add("log_prior", site, site.log_prob())
    return with_kl


def _kl_in_order(model_sites: dict[str, Site], guide_sites: dict[str, Site]) -> set[str]:
    """The latents whose closed-form KL is an unbiased term: those drawn, in the guide, after
    every latent that precedes them in the model. A latent whose model parent is drawn after
    it in the guide (the bottom-up guide of a hierarchical VAE: :math:`z_1` before
    :math:`z_2`, while :math:`p(z_1 \\mid z_2)`) would get
    :math:`\\mathrm{KL}(q(z_1 \\mid x) \\| p(z_1 \\mid z_2))` at a :math:`z_2` that depends on
    :math:`z_1`, which is biased; its term is sampled instead. Conservative: a preceding
    latent that is not a parent also keeps the closed form out (still unbiased)."""
    order = {name: i for i, (name, site) in enumerate(guide_sites.items()) if not site.is_observed}
    allowed: set[str] = set()
    latest = -1  # the latest guide position among the model's latents so far
    for name, site in model_sites.items():
        position = order.get(name)
        if site.is_observed or position is None:
            continue
        if position > latest:
            allowed.add(name)
        latest = max(latest, position)
    return allowed


def _guide_terms(
    sums: _PassSums, guide_sites: dict[str, Site], model_sites: dict[str, Site], with_kl: set[str]
) -> None:
    """Add the guide's sites: latents to ``log_guide`` (and the score part), observed sites
    (factors) to the training terms, subtracted as Pyro's ``Trace_ELBO`` counts them."""
    for name, site in guide_sites.items():
        if site.is_observed:
            if sums.scaled:
                sums.add("extra", site, site.log_prob(), -1.0)
            continue
        if name in with_kl:
            continue
        if not sums.scaled and name not in model_sites and not site.auxiliary_latent:
            raise InputError(
                f"guide site '{name}' is not a site of the model, so its -log q has no prior to "
                "cancel against and per-datapoint bounds would not bound log p(x) (Pyro warns of the "
                "same); add the site to the model, remove it from the guide, or mark it "
                "infer={'is_auxiliary': True} if a later site's density completes it (Pyro's autoguides)"
            )
        lp = site.log_prob()
        sums.add("log_guide", site, lp)
        if not site.reparameterized:
            sums.add("log_guide_score", site, lp)


def _pass_terms(
    model_sites: dict[str, Site],
    guide_sites: dict[str, Site],
    layout: PlateLayout | None,
    k: int,
    scaled: bool,
    analytic_kl: bool,
    totals: bool = False,
) -> tuple[dict[str, torch.Tensor | None], tuple[str, ...]]:
    """The terms of one pass holding ``k`` particles."""
    if not any(s.is_observed and not s.auxiliary for s in model_sites.values()):
        raise InputError("the model has no observed sample sites")
    sums = _PassSums(layout, k, scaled, totals)
    with_kl = _model_terms(sums, model_sites, guide_sites, analytic_kl)
    _guide_terms(sums, guide_sites, model_sites, with_kl)
    return sums.fields(), tuple(sums.outside)


def _is_one(scale: float | torch.Tensor, reference: float) -> bool:
    return not isinstance(scale, torch.Tensor) and scale == reference
