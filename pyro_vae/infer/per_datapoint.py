"""Per-datapoint log densities from Pyro traces, for any model/guide pair."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.subsample_messenger import _Subsample

from pyro_vae.errors import InputError

_PARTICLES = "_pyro_vae_particles"

AUXILIARY = "auxiliary_term"
"""``infer`` key of observed sites that are extra terms of the training objective but not
part of the model's density (e.g. the classification term of the M2 model): evaluation
leaves them out; pyro_vae's estimators add them, scaled, to what they maximize."""


def is_auxiliary(site: dict) -> bool:
    """Whether a site is marked ``infer={AUXILIARY: True}``."""
    return bool(site["infer"].get(AUXILIARY, False))


@dataclass(frozen=True)
class LogTerms:
    """Log densities of one batch, each of shape ``(num_particles, batch)``.

    For particles :math:`z^{(k)} \\sim q(z \\mid x_n)`:
    ``log_likelihood`` :math:`= \\log p(x_n \\mid z^{(k)})` (observed sites),
    ``log_prior`` :math:`= \\log p(z^{(k)})` (latent sites of the model) and
    ``log_guide`` :math:`= \\log q(z^{(k)} \\mid x_n)`. Site scales (minibatch scaling,
    ``poutine.scale`` such as a KL weight) are *not* applied: these are the terms of the
    true, unweighted model. Masks are applied.
    """

    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    log_guide: torch.Tensor

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


def forked_rng(args: Iterable[Any]) -> AbstractContextManager:
    """Fork the CPU random number generator, and that of the GPU the data ``args`` are on:
    for passes that discover a program's structure without changing any later draw."""
    devices = [a.device for a in args if isinstance(a, torch.Tensor) and a.device.type == "cuda"][:1]
    return torch.random.fork_rng(devices=devices)


def max_plate_nesting(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> int:
    """Number of batch dimensions the program's plates use (traced once, without gradients,
    with the random number generators forked: finding it does not change any later draw)."""
    with forked_rng(args), torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [
        -frame.dim
        for trace in (model_trace, guide_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def data_frame(trace: poutine.Trace, plate_name: str) -> CondIndepStackFrame:
    """The frame of the data plate in a trace: its ``dim``, ``size`` (the batch) and ``full_size``."""
    return plate_frame((site for site in trace.nodes.values() if site["type"] == "sample"), plate_name)


def plate_frame(sites: Iterable[dict], plate_name: str) -> CondIndepStackFrame:
    """The frame of the plate ``plate_name`` among sample sites (anything with a
    ``cond_indep_stack``), with a clear error when it is missing or not vectorized."""
    for site in sites:
        for frame in site["cond_indep_stack"]:
            if frame.name == plate_name:
                if frame.dim is None:
                    raise InputError(
                        f"plate '{plate_name}' must be vectorized (a `with pyro.plate(...)` block)"
                    )
                return frame
    raise InputError(
        f"the program has no plate named '{plate_name}' around its sample sites; per-datapoint "
        "evaluation needs the observations in a plate (pass plate_name=... if it has another name)"
    )


def particle_traces(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, num_particles: int, nesting: int
) -> tuple[poutine.Trace, poutine.Trace]:
    """Traces of guide and replayed model with ``num_particles`` draws in a plate at
    ``dim = -(nesting + 1)``; gradients flow as in the program."""

    with poutine.block(hide_types=["sample"]):  # parameters stay visible to SVI's param capture
        guide_trace = poutine.trace(with_particles(guide, num_particles, nesting)).get_trace(*args, **kwargs)
        model_trace = replay_model(model, guide_trace, args, kwargs, num_particles, nesting)
    return model_trace, guide_trace


def with_particles(fn: Callable, num_particles: int, nesting: int) -> Callable:
    """``fn`` inside a plate of ``num_particles`` at ``dim = -(nesting + 1)``."""

    def wrapped(*a: Any, **k: Any) -> Any:
        with pyro.plate(_PARTICLES, num_particles, dim=-(nesting + 1)):
            return fn(*a, **k)

    return wrapped


def replay_model(
    model: Callable, guide_trace: poutine.Trace, args: tuple, kwargs: dict, num_particles: int, nesting: int
) -> poutine.Trace:
    """Trace of the particle-vectorized model with its latents replayed from ``guide_trace``."""
    with poutine.block(hide_types=["sample"]):
        return poutine.trace(
            poutine.replay(with_particles(model, num_particles, nesting), trace=guide_trace)
        ).get_trace(*args, **kwargs)


def reduce_to_datapoints(
    lp: torch.Tensor | float, mask: Any, data_dim: int, batch: int, num_particles: int, ndim: int
) -> torch.Tensor:
    """A site's log-density, masked and summed over every dimension but the particle
    plate (dim 0) and the data plate (``ndim + data_dim``): ``(particles, batch)``."""
    lp = scale_and_mask(lp, mask=mask)
    if not isinstance(lp, torch.Tensor):
        lp = torch.as_tensor(lp)
    lp = lp.reshape((1,) * (ndim - lp.dim()) + lp.shape)
    keep = {0, ndim + data_dim}
    other = [d for d in range(ndim) if d not in keep]
    if other:
        lp = lp.sum(other, keepdim=True)
    return lp.reshape(lp.shape[0], lp.shape[ndim + data_dim]).expand(num_particles, batch)


def check_in_plate(name: str, site: dict, plate_name: str) -> None:
    if not any(f.name == plate_name for f in site["cond_indep_stack"]):
        raise InputError(
            f"sample site '{name}' is outside the plate '{plate_name}', so its log-density "
            "is not a per-datapoint quantity; per-datapoint evaluation needs every sample site "
            "inside the data plate (global latents are not supported here)"
        )


def site_terms(
    trace: poutine.Trace,
    plate_name: str,
    data_dim: int,
    batch: int,
    num_particles: int,
    ndim: int,
    *,
    observed: bool | None,
    log_prob: Callable[[dict], torch.Tensor] | None = None,
    auxiliary: bool = False,
) -> torch.Tensor | None:
    """Sum of the unscaled, masked log-probabilities of the chosen sites, as (particles, batch);
    ``None`` when there are no such sites. ``log_prob(site)`` replaces
    ``site["fn"].log_prob(site["value"])`` when given. Sites marked as :data:`AUXILIARY`
    are left out, or with ``auxiliary=True`` are the only ones summed."""
    total: torch.Tensor | None = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        if is_auxiliary(site) != auxiliary:
            continue
        if observed is not None and bool(site["is_observed"]) != observed:
            continue
        check_in_plate(name, site, plate_name)
        raw = log_prob(site) if log_prob is not None else site["fn"].log_prob(site["value"])
        lp = reduce_to_datapoints(raw, site["mask"], data_dim, batch, num_particles, ndim)
        total = lp if total is None else total + lp
    return total


def log_terms(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1,
    plate_name: str = "data",
    nesting: int | None = None,
    **kwargs: Any,
) -> LogTerms:
    """Draw ``num_particles`` samples from the guide for every datapoint at once (vectorized
    over a particle plate to the left of the program's plates) and return the
    per-datapoint log densities.

    Works for any model/guide pair whose observations and latents sit in a vectorized
    plate ``plate_name``; guide sites may be discrete (values are sampled; no gradient is
    needed). No parameter store state is created or changed beyond what the program itself does.

    :param nesting: the program's ``max_plate_nesting``; traced once when omitted.
    """
    if num_particles < 1:
        raise InputError(f"num_particles must be >= 1, got {num_particles}")
    if nesting is None:
        nesting = max_plate_nesting(model, guide, *args, **kwargs)
    ndim = nesting + 1

    model_trace, guide_trace = particle_traces(model, guide, args, kwargs, num_particles, nesting)
    frame = data_frame(model_trace, plate_name)
    common = (plate_name, frame.dim, frame.size, num_particles, ndim)
    log_likelihood = site_terms(model_trace, *common, observed=True)
    if log_likelihood is None:
        raise InputError("the model has no observed sample sites")
    log_prior = site_terms(model_trace, *common, observed=False)
    log_guide = site_terms(guide_trace, *common, observed=None)
    zero = torch.zeros_like(log_likelihood)
    return LogTerms(
        log_likelihood=log_likelihood,
        log_prior=zero if log_prior is None else log_prior,
        log_guide=zero if log_guide is None else log_guide,
    )


def chunked_log_terms(
    model: Callable,
    guide: Callable,
    *args: torch.Tensor,
    data_chunk: int,
    num_particles: int = 1,
    plate_name: str = "data",
    **kwargs: Any,
) -> Iterator[LogTerms]:
    """:func:`log_terms` over consecutive chunks of ``data_chunk`` rows of the data tensors
    ``args`` (the program is traced once, on one row, to find its plate nesting)."""
    nesting = max_plate_nesting(model, guide, *(a[:1] for a in args), **kwargs)
    for start in range(0, args[0].shape[0], data_chunk):
        chunk = tuple(a[start : start + data_chunk] for a in args)
        yield log_terms(
            model,
            guide,
            *chunk,
            num_particles=num_particles,
            plate_name=plate_name,
            nesting=nesting,
            **kwargs,
        )
