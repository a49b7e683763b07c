"""The ELBO per datapoint, for any model/guide pair."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.distributions import kl_divergence

from pyro_vae._checks import check_positive_int
from pyro_vae.bounds.iwae import BoundEstimate
from pyro_vae.infer.per_datapoint import (
    chunked_log_terms,
    data_frame,
    max_plate_nesting,
    particle_traces,
    site_terms,
)


@torch.no_grad()
def elbo(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1,
    data_chunk: int = 1024,
    plate_name: str = "data",
    return_error: bool = False,
    analytic_kl: bool = False,
    **kwargs: Any,
) -> torch.Tensor | BoundEstimate:
    """Monte Carlo ELBO per datapoint, averaged over ``num_particles`` draws:

    .. math::
        \\mathrm{ELBO}(x) = E_{q(z \\mid x)}[\\log p(x, z) - \\log q(z \\mid x)]
        = \\log p(x) - \\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z \\mid x)) \\le \\log p(x).

    Site scales are not applied (the ELBO of the unweighted model, not a beta-objective).

    With ``analytic_kl=True`` each latent site contributes
    :math:`-\\mathrm{KL}(q(z_i \\mid \\cdot) \\| p(z_i \\mid \\cdot))` in closed form where PyTorch
    registers it (sampled :math:`\\log p - \\log q` otherwise), as in
    :class:`~pyro_vae.infer.MeanFieldELBO`: the same expectation with only
    :math:`\\log p(x \\mid z)` sampled, valid under the same mean-field condition.

    :returns: shape ``(N,)``; with ``return_error=True`` a
        :class:`~pyro_vae.bounds.BoundEstimate` whose error is the standard error of the
        particle average.

    References:
        [1] Jordan, Ghahramani, Jaakkola & Saul (1999), "An introduction to variational
        methods for graphical models", Machine Learning 37.
    """
    check_positive_int(num_particles, "num_particles")
    means, errors = [], []
    for terms in chunked_log_terms(
        model,
        guide,
        *args,
        data_chunk=data_chunk,
        num_particles=num_particles,
        plate_name=plate_name,
        **kwargs,
    ):
        lw = terms.log_weight
        means.append(lw.mean(0))
        sd = lw.std(0) if num_particles > 1 else torch.full_like(lw[0], float("nan"))
        errors.append(sd / num_particles**0.5)
    value = torch.cat(means)
    if return_error:
        return BoundEstimate(value=value, standard_error=torch.cat(errors), num_particles=num_particles)
    return value


def _analytic_chunks(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    data_chunk: int,
    num_particles: int,
    plate_name: str,
) -> Iterator[torch.Tensor]:
    """Per chunk, ``(particles, batch)`` values of log p(x|z) - sum_i KL(q_i || p_i)."""
    nesting = max_plate_nesting(model, guide, *(a[:1] for a in args), **kwargs)
    for start in range(0, args[0].shape[0], data_chunk):
        chunk = tuple(a[start : start + data_chunk] for a in args)
        model_trace, guide_trace = particle_traces(model, guide, chunk, kwargs, num_particles, nesting)
        frame = data_frame(model_trace, plate_name)
        common = (plate_name, frame.dim, frame.size, num_particles, nesting + 1)

        def neg_kl(site: dict, guide_trace: Any = guide_trace) -> torch.Tensor:
            q = guide_trace.nodes[site["name"]]["fn"]
            try:
                return -kl_divergence(q, site["fn"])
            except NotImplementedError:
                return site["fn"].log_prob(site["value"]) - q.log_prob(site["value"])

        value = site_terms(model_trace, *common, observed=True)
        latent = site_terms(model_trace, *common, observed=False, log_prob=neg_kl)
        yield value if latent is None else value + latent
