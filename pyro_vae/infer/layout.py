"""The one per-datapoint reduction: where the particles and the datapoints sit in a site's
log-density, and how a term becomes one value per particle and datapoint."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.indep_messenger import CondIndepStackFrame

from pyro_vae.errors import InputError
from pyro_vae.infer.sites import Site

PARTICLES = "_pyro_vae_particles"
"""Name of the plate that holds the particles, left of the program's own plates."""

PLATE_HELP = (
    "put the observations (and the per-datapoint latents) in a vectorized plate whose size is the "
    "number of rows, e.g. `with pyro.plate('data', len(x)):`, or pass plate_name=... naming it"
)


@dataclass(frozen=True)
class PlateLayout:
    """Axes of a run's log-densities, once each is padded to ``nesting + 1`` dims.

    Axis 0 holds the particles (size :math:`K` when vectorized, 1 for a run of one particle);
    the data plate sits at ``data_dim`` (negative, as Pyro counts plate dims). Every other
    axis (nested plates such as features) is summed.

    :ivar nesting: the program's ``max_plate_nesting``.
    :ivar data_plate: name of the data plate, ``None`` when the program has none.
    :ivar data_dim: its dim.
    :ivar size: datapoints in the batch, :math:`B`.
    :ivar full_size: datapoints in the data set as the plate declares it, :math:`N`
        (:math:`N = B` for a plate without subsampling).
    """

    nesting: int
    data_plate: str | None
    data_dim: int | None
    size: int
    full_size: int

    @property
    def data_scale(self) -> float:
        """:math:`N / B`, the factor Pyro's subsampled plate puts on every site inside it."""
        return self.full_size / self.size

    def in_data_plate(self, site: Site) -> bool:
        return self.data_plate is not None and any(f.name == self.data_plate for f in site.frames)

    def _padded(self, site: Site, lp: torch.Tensor | float, particles: int) -> torch.Tensor:
        lp = lp if isinstance(lp, torch.Tensor) else torch.as_tensor(lp)
        ndim = self.nesting + 1
        if lp.dim() > ndim or (lp.dim() == ndim and lp.shape[0] not in (1, particles)):
            raise InputError(
                f"sample site '{site.name}' has batch shape {tuple(site.fn.batch_shape)}, with dims "
                "outside every plate; declare them with a pyro.plate or move them to the event "
                "shape with .to_event(...)"
            )
        return lp.reshape((1,) * (ndim - lp.dim()) + lp.shape)

    def per_datapoint(self, site: Site, lp: torch.Tensor | float, particles: int) -> torch.Tensor:
        """``lp`` masked and summed over every axis but the particles and the data plate:
        shape ``(K or 1, B or 1)`` (broadcastable to ``(K, B)``)."""
        lp = self._padded(site, scale_and_mask(lp, mask=site.mask), particles)
        ndim = lp.dim()
        keep = ndim + self.data_dim  # type: ignore[operator]
        other = [d for d in range(1, ndim) if d != keep]
        if other:
            lp = lp.sum(other, keepdim=True)
        lp = lp.reshape(lp.shape[0], lp.shape[keep])
        if lp.shape[1] not in (1, self.size):
            raise InputError(
                f"sample site '{site.name}' has {lp.shape[1]} entries along the data plate "
                f"'{self.data_plate}' but the batch has {self.size}"
            )
        return lp

    def per_particle(self, site: Site, lp: torch.Tensor | float, particles: int) -> torch.Tensor:
        """``lp`` masked and summed over every axis but the particles: shape ``(K or 1,)``."""
        lp = self._padded(site, scale_and_mask(lp, mask=site.mask), particles)
        return lp.reshape(lp.shape[0], -1).sum(1)


def frame_size(frame: CondIndepStackFrame, batch_shape: Sequence[int]) -> int:
    """A vectorized plate's size; ``pyro.plate("data")`` without a size (Pyro's SS-VAE)
    records -1, so it is read off the batch shape of a site inside it (-1 if it cannot be)."""
    if frame.size is not None and frame.size >= 0:
        return frame.size
    if frame.dim is not None and len(batch_shape) >= -frame.dim:
        return batch_shape[frame.dim]
    return -1


def broadcast_error(sites: Iterable[Site], *, nesting: int, particles: int) -> str | None:
    """Why a vectorized run of ``particles`` particles did not broadcast, or ``None``: every
    site's batch shape, padded to ``nesting + 1`` dims, must hold the particles (or 1) at
    dim 0 and, at every other dim, 1 or the size of a plate the site is in at that dim. A
    program that moves the particle dim (a transpose of sampled values, say) fails this
    while still running, and would otherwise give silently wrong per-datapoint terms."""
    ndim = nesting + 1
    for site in sites:
        shape = tuple(site.fn.batch_shape)
        if len(shape) > ndim:
            return f"sample site '{site.name}' has batch shape {shape}, more dims than its plates"
        shape = (1,) * (ndim - len(shape)) + shape
        if shape[0] not in (1, particles):
            return f"sample site '{site.name}' has batch shape {shape}: the particles are not at dim 0"
        for axis in range(1, ndim):
            size, dim = shape[axis], axis - ndim
            if size != 1 and not any(
                f.dim == dim and frame_size(f, shape) in (size, -1) for f in site.frames
            ):
                return (
                    f"sample site '{site.name}' has batch shape {shape}, "
                    f"size {size} at dim {dim} outside its plates"
                )
    return None


def _frame_size(frame: CondIndepStackFrame, site: Site) -> int:
    return frame_size(frame, tuple(site.fn.batch_shape))


def find_layout(
    sites: Iterable[Site], *, plate_name: str | None, nesting: int, rows: int | None
) -> tuple[PlateLayout, str | None]:
    """The layout of a run from its sites, and ``None`` or the reason it has no data plate.

    With ``plate_name`` the plate of that name is the data plate. Without it, the data plate
    is the vectorized plate around every observed site whose size is the number of ``rows``
    of the data (the first positional tensor); a plate named ``"data"`` wins a tie.
    """
    sites = list(sites)
    frames = {}
    for site in sites:
        for frame in site.frames:
            if frame.name != PARTICLES:
                frames.setdefault(frame.name, (frame, site))
    if plate_name is not None:
        if plate_name not in frames:
            return _no_plate(nesting, rows), f"the program has no plate named '{plate_name}'; {PLATE_HELP}"
        chosen = frames[plate_name]
    else:
        observed = [  # observed sites in some plate: a global factor says nothing of the data plate
            s
            for s in sites
            if s.is_observed
            and not s.auxiliary
            and any(f.dim is not None and f.name != PARTICLES for f in s.frames)
        ] or list(sites)
        common = set(frames)
        for site in observed:
            common &= {f.name for f in site.frames}
        candidates = [
            frames[name]
            for name in common
            if frames[name][0].dim is not None
            and (rows is None or _frame_size(frames[name][0], frames[name][1]) == rows)
        ]
        if not candidates:
            iterated = sorted({f.name for f, _ in frames.values() if f.dim is None and f.size == rows})
            if iterated:
                return _no_plate(nesting, rows), (
                    f"plate '{iterated[0]}' must be vectorized (`with pyro.plate(...)`), not iterated over "
                    "(`for i in pyro.plate(...)`): per-datapoint terms need the datapoints along one dim"
                )
            subsampled = sorted(
                {f.name for f, _ in frames.values() if f.full_size == rows and f.size != rows}
            )
            if subsampled:
                return _no_plate(nesting, rows), (
                    f"plate '{subsampled[0]}' subsamples the data itself (subsample_size=...); per-datapoint "
                    "tools need the plate over every row they are given: drop subsample_size and pass "
                    "minibatches (fit does) or chunks (the bounds do) instead"
                )
            where = f" of size {rows} (the number of rows)" if rows is not None else ""
            return _no_plate(
                nesting, rows
            ), f"the program has no vectorized plate{where} around its observations; {PLATE_HELP}"
        if len(candidates) > 1:
            named = [c for c in candidates if c[0].name == "data"]
            if len(named) != 1:
                names = sorted(c[0].name for c in candidates)
                return _no_plate(nesting, rows), (
                    f"plates {names} could each be the data plate; pass plate_name=... naming the one "
                    "over datapoints"
                )
            candidates = named
        chosen = candidates[0]
    frame, site = chosen
    if frame.dim is None:
        return _no_plate(nesting, rows), (
            f"plate '{frame.name}' must be vectorized (`with pyro.plate(...)`), not iterated over"
        )
    size = _frame_size(frame, site)
    full = frame.full_size if frame.full_size is not None and frame.full_size >= 0 else size
    return PlateLayout(
        nesting=nesting, data_plate=frame.name, data_dim=frame.dim, size=size, full_size=full
    ), None


def _no_plate(nesting: int, rows: int | None) -> PlateLayout:
    size = rows or 1
    return PlateLayout(nesting=nesting, data_plate=None, data_dim=None, size=size, full_size=size)
