"""The guide's per-datapoint log density at given latent values: :math:`\\log q(z_s \\mid x_n)`
for every given value :math:`z_s` and every datapoint :math:`x_n` of a batch, for any guide."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyro_vae.errors import InputError
from pyro_vae.infer.particles import VECTORIZED, ParticleRun, ProgramPlan, run_particles
from pyro_vae.infer.sites import Site
from pyro_vae.infer.values import particle_values, value_hooks


def _latents(sites: dict[str, Site]) -> dict[str, Site]:
    return {n: s for n, s in sites.items() if not s.is_observed}


def per_datapoint_values(run: ParticleRun) -> dict[str, torch.Tensor]:
    """The values of every latent guide site of ``run`` as one value per particle and
    datapoint: for a site whose padded shape (the program's plates, then the event) is
    :math:`P`, a tensor ``(K * B,) + P'`` where :math:`P'` is :math:`P` with size 1 at the
    data plate; row ``k * B + n`` holds particle ``k``'s draw for datapoint ``n``. These are
    the ``values`` :func:`guide_log_density` takes."""
    layout = run.layout
    if layout.data_dim is None:
        raise InputError(run.layout_error or "the program has no data plate")
    nesting, b = layout.nesting, layout.size
    latents = _latents(run.passes[0][1])
    for name, site in latents.items():
        if not layout.in_data_plate(site):
            raise InputError(
                f"guide site '{name}' is outside the data plate: a global latent has no value per "
                "datapoint, so q(z | x_n) of the other datapoints cannot be evaluated at it"
            )
    out: dict[str, torch.Tensor] = {}
    for name, v in particle_values(run, latents).items():
        axis = 1 + nesting + layout.data_dim  # type: ignore[operator]
        if v.shape[axis] != b:
            v = v.expand(*v.shape[:axis], b, *v.shape[axis + 1 :])
        rows = v.movedim(axis, 1).reshape(run.num_particles * b, *v.shape[1:axis], *v.shape[axis + 1 :])
        out[name] = rows.unsqueeze(axis)
    return out


def _no_model(*args: object, **kwargs: object) -> None:
    """A model with no sites: only the guide's densities are wanted."""


@torch.no_grad()
def guide_log_density(
    guide: Callable,
    args: tuple,
    kwargs: dict,
    values: dict[str, torch.Tensor],
    *,
    plan: ProgramPlan,
    vectorize: bool | None = None,
) -> torch.Tensor:
    """:math:`\\log q(z_s \\mid x_n)` for each given value :math:`z_s` (``values``, as
    :func:`per_datapoint_values` gives them: ``S`` rows per site) and each of the ``B``
    datapoints of ``args``, shape ``(S, B)``: the sum over the guide's latent sites of their
    unscaled, masked log densities, reduced per datapoint by the one
    :class:`~pyro_vae.infer.layout.PlateLayout`.

    The guide runs once with the ``S`` values along the particle plate (a value hook sets
    every latent site, :func:`~pyro_vae.infer.particles.run_particles`), or once per value
    when it does not broadcast over a particle dimension. Every latent guide site must be
    given a value. Run it with modules in eval mode
    (:func:`~pyro_vae.infer.modes.frozen_evaluation`) for evaluation.
    """
    if not values:
        raise InputError("no latent values given")
    s = {v.shape[0] for v in values.values()}
    if len(s) != 1:
        raise InputError(f"every site needs the same number of values, got {sorted(s)}")
    (count,) = s
    run = run_particles(
        _no_model,
        guide,
        args,
        kwargs,
        plan=plan,
        num_particles=count,
        hooks=value_hooks(values),
        vectorize=vectorize,
    )
    layout = run.layout
    if layout.data_dim is None:
        raise InputError(run.layout_error or "the guide has no data plate")
    k = count if run.mode == VECTORIZED else 1
    parts = []
    for _, guide_sites in run.passes:
        latents = _latents(guide_sites)
        missing = sorted(set(latents) - set(values))
        if missing:
            raise InputError(
                f"guide sites {missing} were given no values; pass a value for every latent site"
            )
        total = None
        for site in latents.values():
            lp = layout.per_datapoint(site, site.log_prob(), k)
            total = lp if total is None else total + lp
        parts.append(total.expand(k, layout.size))  # type: ignore[union-attr]
    return torch.cat(parts, 0)
