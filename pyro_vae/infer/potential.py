"""A program's per-datapoint log densities at given values of its latents, in the unconstrained
space where gradient-based samplers (HMC, annealed importance sampling) move.

The guide's latent sites, each moved to :math:`\\mathbb R^{d_i}` by
``torch.distributions.biject_to(site.fn.support)``, are concatenated into one flat vector
:math:`u` per particle and datapoint, shape ``(K, B, D)``. At :math:`u` the program is run
through the core (:func:`~pyro_vae.infer.particles.run_particles` with a value hook that sets
the guide sites' values, then :func:`~pyro_vae.infer.terms.collect_terms`), which gives the
per-datapoint :math:`\\log p(x \\mid z)`, :math:`\\log p(z)` and :math:`\\log q(z \\mid x)` at
:math:`z = T(u)`, and the change of variables adds :math:`\\log |\\det \\partial T / \\partial u|`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.poutine
import torch
from torch.distributions import Transform, biject_to

from pyro_vae.errors import InputError
from pyro_vae.infer.modes import evaluation_mode, frozen_evaluation
from pyro_vae.infer.particles import ParticleRun, ProgramPlan, record_program, run_particles
from pyro_vae.infer.sites import Site
from pyro_vae.infer.terms import collect_terms
from pyro_vae.infer.values import particle_values, value_hooks


@dataclass(frozen=True)
class LatentTerms:
    """Per-datapoint log densities at :math:`z = T(u)`, each ``(K, B)``: ``log_likelihood``
    :math:`\\log p(x \\mid z)`, ``log_prior`` :math:`\\log p(z)`, ``log_guide``
    :math:`\\log q(z \\mid x)` and ``log_jacobian`` :math:`\\log |\\det \\partial T/\\partial u|`
    (add it to a density of :math:`z` to get the density of :math:`u`)."""

    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    log_guide: torch.Tensor
    log_jacobian: torch.Tensor

    @property
    def log_joint(self) -> torch.Tensor:
        """:math:`\\log p(x, z)`."""
        return self.log_likelihood + self.log_prior


@dataclass(frozen=True)
class _Block:
    """One latent site: its name, its value's shape in one run padded to ``nesting + 1``
    batch dims (axis 0 is the particle axis, of size 1 here), where the data plate sits in
    it, and the bijection from :math:`\\mathbb R` onto its support."""

    name: str
    shape: tuple[int, ...]
    data_axis: int
    transform: Transform
    size: int


class LatentSpace:
    """The guide's latent sites as one flat unconstrained vector per particle and datapoint.

    Built from one run of the program (:meth:`from_run`); :meth:`pack` maps site values
    (particles first, ``(K, ...)``) to :math:`u` of shape ``(K, B, D)`` and :meth:`unpack`
    maps back, with the log-Jacobian of :math:`T` per particle and datapoint.
    """

    def __init__(self, blocks: list[_Block], rows: int) -> None:
        self.blocks = blocks
        self.rows = rows
        self.size = sum(b.size for b in blocks)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    @classmethod
    def from_run(cls, run: ParticleRun, *, what: str = "this tool") -> LatentSpace:
        """The latent space of a single-particle run's guide sites; refuses what cannot be
        moved to :math:`\\mathbb R^D` per datapoint (discrete sites, sites outside the data
        plate, model latents the guide does not propose)."""
        model_sites, guide_sites = run.passes[0]
        layout = run.layout
        if run.layout_error is not None:
            raise InputError(run.layout_error)
        latents = {n: s for n, s in guide_sites.items() if not s.is_observed}
        _check_latents(model_sites, latents, what)
        blocks = []
        for name, site in latents.items():
            if not layout.in_data_plate(site):
                raise InputError(
                    f"{what} needs every latent inside the data plate, and guide site '{name}' is "
                    "outside it (global latents are not supported here)"
                )
            blocks.append(_block(site, layout.nesting, layout.data_dim, layout.size, what))  # type: ignore[arg-type]
        if not blocks:
            raise InputError(f"{what} needs continuous latent sites in the guide, and it has none")
        return cls(blocks, layout.size)

    def pack(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Site values, each ``(K, *shape[1:])``, to :math:`u = T^{-1}(z)` of shape ``(K, B, D)``."""
        parts = []
        for b in self.blocks:
            v = values[b.name]
            u = b.transform.inv(v.reshape((-1, *b.shape[1:])))
            parts.append(u.movedim(b.data_axis, 1).reshape(u.shape[0], self.rows, -1))
        return torch.cat(parts, -1)

    def unpack(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """:math:`u` of shape ``(K, B, D)`` to the site values :math:`z = T(u)`, each
        ``(K, *shape[1:])``, and :math:`\\log |\\det \\partial T / \\partial u|` of shape ``(K, B)``."""
        k = u.shape[0]
        values, log_jacobian, start = {}, u.new_zeros(k, self.rows), 0
        for b in self.blocks:
            flat = u[..., start : start + b.size]
            start += b.size
            moved = [s for i, s in enumerate(b.shape) if i not in (0, b.data_axis)]
            part = flat.reshape(k, self.rows, *moved).movedim(1, b.data_axis)
            value = b.transform(part)
            values[b.name] = value
            ladj = b.transform.log_abs_det_jacobian(part, value)
            if isinstance(ladj, torch.Tensor) and ladj.dim() > 0:
                ladj = ladj.expand(value.shape[: ladj.dim()])
                log_jacobian = log_jacobian + ladj.movedim(b.data_axis, 1).reshape(k, self.rows, -1).sum(-1)
        return values, log_jacobian


def _check_latents(model_sites: dict[str, Site], latents: dict[str, Site], what: str) -> None:
    for name, site in latents.items():
        if site.auxiliary_latent:
            raise InputError(
                f"{what} anneals over the guide's latents, and guide site '{name}' is an auxiliary "
                "variable (infer={'is_auxiliary': True}); use a guide whose latents are the model's"
            )
        if site.fn.support.is_discrete:
            raise InputError(
                f"{what} is for continuous latents, and guide site '{name}' is discrete "
                f"({type(site.fn).__name__}); sum it out in the model (e.g. MixtureSameFamily, or a "
                "pyro.factor with the logsumexp over its values) and remove it from the guide"
            )
    for name, site in model_sites.items():
        if not site.is_observed and name not in latents:
            raise InputError(
                f"{what} anneals over the guide's latents, and model latent '{name}' has no guide "
                "site; add it to the guide, or sum it out in the model if it is discrete"
            )


def _block(site: Site, nesting: int, data_dim: int, rows: int, what: str) -> _Block:
    event = len(site.fn.event_shape)
    batch = site.value.dim() - event
    shape = (1,) * (nesting + 1 - batch) + tuple(site.value.shape)
    data_axis = nesting + 1 + data_dim
    if shape[data_axis] != rows:
        raise InputError(
            f"guide site '{site.name}' has {shape[data_axis]} entries along the data plate but the batch "
            f"has {rows}; {what} needs one value per datapoint"
        )
    try:
        transform = biject_to(site.fn.support)
    except NotImplementedError:
        raise InputError(
            f"{what} moves latents to unconstrained space, and guide site '{site.name}' has support "
            f"{site.fn.support}, for which torch.distributions registers no bijection"
        ) from None
    size = transform.inv.forward_shape(torch.Size(shape)).numel() // rows
    return _Block(site.name, shape, data_axis, transform, size)


def latent_terms(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    u: torch.Tensor,
    *,
    plan: ProgramPlan,
    space: LatentSpace,
) -> LatentTerms:
    """The per-datapoint log densities of the program at :math:`z = T(u)`, ``u`` of shape
    ``(K, B, D)``: each of shape ``(K, B)``, differentiable in ``u`` when ``u`` requires
    gradients (the caller chooses ``torch.enable_grad`` or not). Modules run in eval mode;
    vectorized over ``K`` when the program broadcasts, one particle at a time otherwise."""
    values, log_jacobian = space.unpack(u)
    with evaluation_mode():
        run = run_particles(
            model, guide, args, kwargs, plan=plan, num_particles=u.shape[0], hooks=value_hooks(values)
        )
        terms = collect_terms(run, scaled=False)
    terms.require_per_datapoint()
    return LatentTerms(terms.log_likelihood, terms.log_prior, terms.log_guide, log_jacobian)


def draw_guide(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    plan: ProgramPlan,
    space: LatentSpace,
    k: int,
) -> torch.Tensor:
    """``k`` draws :math:`z \\sim q(z \\mid x)` per datapoint, as :math:`u = T^{-1}(z)`, ``(k, B, D)``."""
    with frozen_evaluation():
        run = run_particles(model, guide, args, kwargs, plan=plan, num_particles=k)
    return space.pack(particle_values(run, space.names))


def draw_prior(
    model: Callable, args: tuple, kwargs: dict, *, plan: ProgramPlan, space: LatentSpace, k: int
) -> torch.Tensor:
    """``k`` draws :math:`z \\sim p(z)` per datapoint (the model's latents, run without a
    guide), as :math:`u = T^{-1}(z)`, ``(k, B, D)``."""
    with frozen_evaluation():
        values = None
        if plan.vectorize is not False and k > 1:
            try:
                sites = record_program(model, args, kwargs, particles=(k, -(plan.nesting + 1))).sites
                values = {b.name: sites[b.name].value.reshape(k, *b.shape[1:]) for b in space.blocks}
            except (RuntimeError, ValueError, IndexError, TypeError):  # does not broadcast
                values = None
        if values is None:
            passes = [record_program(model, args, kwargs).sites for _ in range(k)]
            values = {
                b.name: torch.stack([p[b.name].value.reshape(b.shape[1:]) for p in passes])
                for b in space.blocks
            }
    return space.pack(values)


def simulate(model: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict[str, torch.Tensor]]:
    """One draw :math:`(x, z) \\sim p(x, z)` per datapoint: the model run once with its observed
    sites sampled (``pyro.poutine.uncondition``), modules in eval mode. Returns the data
    ``args`` with every positional tensor that a site observed replaced by that site's draw
    (the rows and shapes of ``args`` are the template), and the draws of the model's latent
    sites (as in a run of one particle)."""
    observed: dict[str, torch.Tensor] = {}

    def note(msg: dict) -> None:
        infer = msg.get("infer") or {}
        if infer.get("was_observed"):
            observed[msg["name"]] = infer["obs"]
        return None

    with frozen_evaluation():
        sites = record_program(pyro.poutine.uncondition(model), args, kwargs, value_hook=note).sites
    new_args, used = list(args), set()
    for i, a in enumerate(args):
        for name, obs in observed.items():
            if obs is a or (name not in used and obs.shape == a.shape and torch.equal(obs, a)):
                new_args[i] = sites[name].value.reshape(a.shape).to(a.dtype)
                used.add(name)
    if not used:
        raise InputError(
            "simulating data needs the model to observe its positional data arguments (obs=x); "
            "no observed site of the model holds one of them"
        )
    latents = {n: s.value for n, s in sites.items() if n not in observed}
    return tuple(new_args), latents


__all__ = [
    "LatentSpace",
    "LatentTerms",
    "draw_guide",
    "draw_prior",
    "latent_terms",
    "simulate",
]
