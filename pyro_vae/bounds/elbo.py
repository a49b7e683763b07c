"""The ELBO per datapoint, for any model/guide pair."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pyro_vae._checks import check_positive_int
from pyro_vae.bounds.iwae import BoundEstimate
from pyro_vae.infer.per_datapoint import chunked_log_terms


@torch.no_grad()
def elbo(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1,
    data_chunk: int = 1024,
    plate_name: str = "data",
    return_error: bool = False,
    **kwargs: Any,
) -> torch.Tensor | BoundEstimate:
    """Monte Carlo ELBO per datapoint, averaged over ``num_particles`` draws:

    .. math::
        \\mathrm{ELBO}(x) = E_{q(z \\mid x)}[\\log p(x, z) - \\log q(z \\mid x)]
        = \\log p(x) - \\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z \\mid x)) \\le \\log p(x).

    Site scales are not applied (the ELBO of the unweighted model, not a beta-objective).

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
