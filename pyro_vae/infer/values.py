"""Latent values in and out of a particle run: the value hooks that set guide sites to given
values (:func:`value_hooks`) and the values a run drew, particles first
(:func:`particle_values`). The one mechanism behind evaluating a program at given latents
(:mod:`~pyro_vae.infer.potential`, :mod:`~pyro_vae.infer.guide_density`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from pyro.poutine.runtime import Message

from pyro_vae.errors import InputError
from pyro_vae.infer.particles import VECTORIZED, HookFactory, ParticleRun


def broadcast_shapes(a: torch.Size, b: torch.Size) -> torch.Size:
    """NumPy broadcasting of two shapes (``torch.broadcast_shapes`` imports sympy, seconds)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            raise InputError(f"shapes {a} and {b} do not broadcast")
        out.append(y if x == 1 else x)
    return torch.Size(out)


def _site_shape(msg: Message) -> torch.Size:
    fn = msg["fn"]
    return torch.Size(fn.batch_shape) + fn.event_shape  # type: ignore[union-attr]


def _fitted(msg: Message, v: torch.Tensor) -> torch.Tensor:
    """``v`` shaped as the site's draw: the leading dims a run without the padding (or without
    the particle plate) lacks are dropped (they are 1), the rest broadcast to the site's
    batch and event shape."""
    shape = _site_shape(msg)
    if v.dim() > len(shape):
        v = v.reshape(v.shape[v.dim() - len(shape) :])
    return v.expand(broadcast_shapes(v.shape, shape))


def value_hooks(values: dict[str, torch.Tensor]) -> HookFactory:
    """Value hooks (a :data:`~pyro_vae.infer.particles.HookFactory`) that set each guide site
    named in ``values`` to its given value and leave the others to be drawn.

    ``values[name]`` holds the particles first, ``(K, *P)`` with :math:`P` the site's shape
    padded to the program's plates (and the event): a vectorized run (``factory(None)``)
    takes it whole, the run of particle ``k`` alone (``factory(k)``) takes ``values[name][k]``.
    Either is broadcast to the site's batch and event shape."""

    def factory(k: int | None) -> Callable[[Message], torch.Tensor | None]:
        def hook(msg: Message) -> torch.Tensor | None:
            v = values.get(msg["name"])  # type: ignore[arg-type]
            if v is None:
                return None
            return _fitted(msg, v if k is None else v[k])

        return hook

    return factory


def particle_values(
    run: ParticleRun, names: Iterable[str] | None = None, *, program: str = "guide"
) -> dict[str, torch.Tensor]:
    """The values of the latent sites of a run's ``program`` (``"guide"`` or ``"model"``;
    ``names``: those sites, all latent sites by default), particles first: for a site whose
    shape padded to the program's plates (and its event) is :math:`P`, a tensor ``(K, *P)``,
    broadcast to the site's batch and event shape. These are the ``values`` that
    :func:`value_hooks` takes."""
    index = 0 if program == "model" else 1
    sites = run.passes[0][index]
    if names is None:
        names = [n for n, s in sites.items() if not s.is_observed]
    nesting = run.plan.nesting
    out: dict[str, torch.Tensor] = {}
    for name in names:
        ndim = nesting + 1 + len(sites[name].fn.event_shape)  # particle axis, plates, event
        stacked = []
        for p in run.passes:
            s = p[index][name]
            shape = torch.Size(s.fn.batch_shape) + s.fn.event_shape
            v = s.value.expand(broadcast_shapes(s.value.shape, shape))
            stacked.append(v.reshape((1,) * (ndim - v.dim()) + v.shape))
        v = stacked[0] if run.mode == VECTORIZED else torch.cat(stacked, 0)
        out[name] = v.expand(run.num_particles, *v.shape[1:])
    return out


__all__ = ["broadcast_shapes", "particle_values", "value_hooks"]
