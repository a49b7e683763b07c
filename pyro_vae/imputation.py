"""Imputation of missing features by self-normalized importance sampling with the guide as
proposal, for any model/guide pair that takes ``(x, mask)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro.distributions.torch_distribution import MaskedDistribution
from torch.distributions import Distribution, Independent

from pyro_vae._checks import check_positive_int, check_rows
from pyro_vae.errors import InputError
from pyro_vae.infer.modes import frozen_evaluation
from pyro_vae.infer.particles import VECTORIZED, ParticleRun, run_particles
from pyro_vae.infer.per_datapoint import evaluate_particles, probe
from pyro_vae.infer.values import value_hooks


@dataclass(frozen=True)
class Imputation:
    """Draws from :math:`p(x_{\\mathrm{miss}} \\mid x_{\\mathrm{obs}})`, completed with the
    observed features.

    :ivar samples: ``(num_samples, B, D)``: observed features as given, missing ones drawn.
    :ivar mean: ``(B, D)``: the observed features, and at the missing ones the
        self-normalized estimate of the posterior-predictive mean
        :math:`\\sum_k \\bar w_k\\, E[x_{\\mathrm{miss}} \\mid z_k]`.
    :ivar ess: ``(B,)``: the effective sample size :math:`1 / \\sum_k \\bar w_k^2` of the
        normalized weights (between 1 and ``num_particles``).
    :ivar log_weights: ``(num_particles, B)``:
        :math:`\\log p(x_{\\mathrm{obs}}, z_k) - \\log q(z_k \\mid x_{\\mathrm{obs}})`.
    """

    samples: torch.Tensor
    mean: torch.Tensor
    ess: torch.Tensor
    log_weights: torch.Tensor


def _features(fn: Distribution) -> Distribution:
    """The distribution of every feature of an observed site: its per-feature mask removed."""
    if isinstance(fn, Independent):
        return Independent(_features(fn.base_dist), fn.reinterpreted_batch_ndims)
    if isinstance(fn, MaskedDistribution):
        return fn.base_dist
    return fn


def _is_masked(fn: Distribution) -> bool:
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return isinstance(fn, MaskedDistribution)


def _per_particle(
    run: ParticleRun, site: str, f: Callable[[Distribution], torch.Tensor], rows: int
) -> torch.Tensor:
    """``f`` of the model's distribution at ``site`` for every particle, ``(K, B, D)``."""
    values = [f(_features(m[site].fn)) for m, _ in run.passes]
    value = values[0] if run.mode == VECTORIZED else torch.stack(values)
    try:
        return value.reshape(run.num_particles, rows, -1)
    except RuntimeError:
        raise InputError(
            f"impute needs observed site '{site}' to hold one row of features per datapoint; "
            f"it has shape {tuple(values[0].shape)}"
        ) from None


def _resampled_latents(run: ParticleRun, index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every latent guide site's values at particles ``index`` ``(M, B)`` of each datapoint,
    particles first, shaped for a run of ``M`` particles."""
    layout, out = run.layout, {}
    for name, s in run.passes[0][1].items():
        if s.is_observed:
            continue
        values = run.guide_values(name)  # (K, *batch, *event)
        event = len(s.fn.event_shape)
        at = values.dim() - event + layout.data_dim  # the data plate's position in values
        shape = [index.shape[0]] + [1] * (values.dim() - 1)
        shape[at] = index.shape[1]
        out[name] = torch.take_along_dim(values, index.reshape(shape), dim=0)
    return out


def _check_takes_mask(fn: Callable, role: str) -> None:
    """The program must take the mask as its second positional argument."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params):
        raise InputError(
            f"impute calls {role}(x, mask), and this {role} takes {len(positional)} positional "
            "argument(s): a program for incomplete data takes the missingness mask (observed = 1) as its "
            "second positional argument and leaves the missing features out of the likelihood "
            "(likelihood.masked(output, mask), or dist.Normal(...).mask(mask).to_event(1)); the guide reads "
            "the observed part only (e.g. torch.cat([x * mask, mask], -1))"
        )


@torch.no_grad()
def impute(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_samples: int = 100,
    num_particles: int = 1000,
    site: str = "x",
    plate_name: str | None = None,
    **kwargs: Any,
) -> Imputation:
    """Impute the features of ``x`` where ``mask`` is 0 by self-normalized importance
    sampling [1, 2, 3] with the guide :math:`q(z \\mid x_{\\mathrm{obs}})` as proposal:

    .. math::
        z_k \\sim q(z \\mid x_{\\mathrm{obs}}), \\quad
        w_k = \\frac{p(x_{\\mathrm{obs}}, z_k)}{q(z_k \\mid x_{\\mathrm{obs}})}, \\quad
        \\bar w_k = \\frac{w_k}{\\sum_j w_j}, \\qquad
        p(x_{\\mathrm{miss}} \\mid x_{\\mathrm{obs}}) \\approx \\sum_k \\bar w_k\\,
        p(x_{\\mathrm{miss}} \\mid z_k),

    the weights computed per datapoint by the inference core (the model's masked likelihood
    gives :math:`p(x_{\\mathrm{obs}} \\mid z)`), then ``num_samples`` particles resampled by
    :math:`\\bar w` and :math:`x_{\\mathrm{miss}}` drawn from the likelihood at each. The
    estimate is consistent as ``num_particles`` grows (biased by :math:`O(1/K)` at finite
    :math:`K`); with the exact posterior as guide every weight is :math:`p(x_{\\mathrm{obs}})`
    and the draws are exact (both tested on the linear-Gaussian model). The effective sample
    size says how far to trust each row.

    ``model`` and ``guide`` are called as ``model(x, mask, **kwargs)``; the model's observed
    ``site`` must leave the missing features out of its density with a per-feature mask
    (:meth:`~pyro_vae.likelihoods.Likelihood.masked`, ``Distribution.mask``). Modules run in
    eval mode; nothing is differentiated.

    References:
        [1] Rezende, Mohamed & Wierstra (2014), "Stochastic backpropagation and approximate
        inference in deep generative models", ICML.
        [2] Mattei & Frellsen (2019), "MIWAE: deep generative modelling and imputation of
        incomplete data sets", ICML.
        [3] Nazábal, Olmos, Ghahramani & Valera (2020), "Handling incomplete heterogeneous data
        using VAEs", Pattern Recognition 107.
    """
    check_positive_int(num_samples, "num_samples")
    check_positive_int(num_particles, "num_particles")
    args = (x, mask)
    check_rows(args)
    if mask.shape != x.shape:
        raise InputError(
            f"the mask has shape {tuple(mask.shape)} but x has {tuple(x.shape)}; pass one flag per entry"
        )
    for program, role in ((model, "model"), (guide, "guide")):
        _check_takes_mask(program, role)
    rows = x.shape[0]
    plan = probe(model, guide, args, kwargs, plate_name)
    run, terms = evaluate_particles(model, guide, args, kwargs, num_particles=num_particles, plan=plan)
    model_sites = run.passes[0][0]
    if site not in model_sites or not model_sites[site].is_observed:
        raise InputError(f"the model has no observed site '{site}'; pass site= the name of the data's site")
    if not _is_masked(model_sites[site].fn) and model_sites[site].mask is None:
        raise InputError(
            f"the model's observed site '{site}' is not masked, so its weights would count the missing "
            "features as observed; leave them out of the density with a per-feature mask "
            "(likelihood.masked(output, mask), or Distribution.mask(mask) before to_event)"
        )
    log_w = terms.log_weight  # (K, B)
    weights = torch.softmax(log_w, dim=0)
    ess = 1.0 / (weights**2).sum(0)
    means = _per_particle(run, site, lambda fn: fn.mean, rows)  # (K, B, D)
    predictive = (weights.unsqueeze(-1) * means).sum(0)
    observed = mask > 0.5
    index = torch.multinomial(weights.T, num_samples, replacement=True).T  # (M, B)
    latents = _resampled_latents(run, index)

    with frozen_evaluation():
        draws_run = run_particles(
            model, guide, args, kwargs, plan=plan, num_particles=num_samples, hooks=value_hooks(latents)
        )
        draws = _per_particle(draws_run, site, lambda fn: fn.sample(), rows)
    return Imputation(
        samples=torch.where(observed, x, draws),
        mean=torch.where(observed, x, predictive),
        ess=ess,
        log_weights=log_w,
    )
