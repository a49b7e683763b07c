"""A per-datapoint Gaussian guide with free parameters, and its ELBO: the one mechanism behind
the amortization gap (Cremer et al.'s :math:`q^*`) and semi-amortized refinement (Kim et al.).

The amortized guide's distribution at one latent site (a diagonal ``Normal`` or a
``MultivariateNormal`` inside the data plate) gives the initial parameters
:math:`\\lambda_n` of one Gaussian per datapoint; :class:`LocalGaussian` is then a Pyro guide
with the same site, data plate (name, dim, size and subsampling) and site scale as the
amortized one, whose parameters are plain tensors: they can be leaves that an optimizer
updates (the amortization gap) or functions of the encoder's output through gradient steps
(the semi-amortized guide, differentiated through). :func:`local_elbo` is the per-datapoint
ELBO of such a guide, through the inference core.

References:
    [1] Cremer, Li & Duvenaud (2018), "Inference suboptimality in variational autoencoders", ICML.
    [2] Kim, Wiseman, Miller, Sontag & Rush (2018), "Semi-amortized variational autoencoders", ICML.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.runtime import Message
from torch.distributions import Independent, MultivariateNormal, Normal

from pyro_vae._checks import data_rows
from pyro_vae.errors import InputError
from pyro_vae.infer.particles import HookFactory, ProgramPlan, plan_program, record_program, run_particles
from pyro_vae.infer.sites import Site
from pyro_vae.infer.terms import collect_terms

NORMAL, MVN = "normal", "mvn"


@dataclass(frozen=True)
class LocalGaussian:
    """One Gaussian per datapoint at guide site ``site``, as a Pyro guide.

    Parameterization (unconstrained, so that any gradient step stays in the family):
    a diagonal Normal by ``(loc, log_scale)``; a ``MultivariateNormal`` by
    ``(loc, tril_off, log_diag)`` with :math:`L = \\mathrm{tril}_{-1}(\\cdot) +
    \\mathrm{diag}(e^{\\text{log\\_diag}})`. ``params`` holds these tensors, batch first over
    the data plate's rows; :meth:`with_params` returns the guide at other values.

    Calling it samples ``site`` inside a plate of the amortized guide's name, dim and
    (sub)sample size, with the amortized site's extra scale and mask (a KL weight), so that
    every tool sees the same program structure as with the amortized guide.
    """

    site: str
    kind: str
    event: int
    params: tuple[torch.Tensor, ...]
    plate_name: str
    plate_dim: int
    plate_size: int
    scale: float | torch.Tensor = 1.0
    mask: Any = None

    @classmethod
    def from_site(cls, site: Site, plate: Any, *, detach: bool = True) -> LocalGaussian:
        """The Gaussian of a recorded guide site ``site`` in data plate frame ``plate``:
        initialized at the site's parameters, cut from the graph and made leaves that require
        gradients when ``detach`` (an optimizer's variables), else functions of them."""
        base, event = site.fn, 0
        while isinstance(base, Independent):
            event += base.reinterpreted_batch_ndims
            base = base.base_dist
        if isinstance(base, MultivariateNormal):
            tril = base.scale_tril.expand(base.batch_shape + base.event_shape + base.event_shape)
            params = (base.loc.expand(tril.shape[:-1]), tril.tril(-1), tril.diagonal(dim1=-2, dim2=-1).log())
            kind = MVN
        elif isinstance(base, Normal):
            params = (base.loc, base.scale.expand_as(base.loc).log())
            kind = NORMAL
        else:
            raise InputError(
                f"a per-datapoint Gaussian needs a Normal or MultivariateNormal guide at '{site.name}', "
                f"got {type(base).__name__}; use a Gaussian guide for this site"
            )
        if detach:
            params = tuple(p.detach().clone().requires_grad_(True) for p in params)
        plate_scale = (plate.full_size or plate.size) / plate.size
        extra = site.scale / plate_scale if not _is_one(site.scale, plate_scale) else 1.0
        return cls(
            site=site.name,
            kind=kind,
            event=event,
            params=params,
            plate_name=plate.name,
            plate_dim=plate.dim,
            plate_size=plate.full_size or plate.size,
            scale=extra,
            mask=site.mask,
        )

    def with_params(self, params: Sequence[torch.Tensor]) -> LocalGaussian:
        """The same guide at parameters ``params`` (same order and shapes as :attr:`params`)."""
        return replace(self, params=tuple(params))

    def detached(self) -> LocalGaussian:
        return self.with_params([p.detach() for p in self.params])

    def distribution(self) -> Any:
        """:math:`q_\\lambda(z_n)`, batched over the data plate's rows."""
        if self.kind == MVN:
            loc, tril_off, log_diag = self.params
            return dist.MultivariateNormal(
                loc, scale_tril=tril_off.tril(-1) + torch.diag_embed(log_diag.exp())
            )
        loc, log_scale = self.params
        return dist.Normal(loc, log_scale.exp()).to_event(self.event)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        q = self.distribution()
        rows = q.batch_shape[self.plate_dim]
        subsample = torch.arange(rows, device=self.params[0].device)
        with pyro.plate(self.plate_name, self.plate_size, subsample=subsample, dim=self.plate_dim):
            masked = nullcontext() if self.mask is None else poutine.mask(mask=self.mask)
            with poutine.scale(scale=self.scale), masked:
                return pyro.sample(self.site, q)


def _is_one(a: float | torch.Tensor, b: float) -> bool:
    return not isinstance(a, torch.Tensor) and math.isclose(a, b)


def data_frame(site: Site, rows: int, plate_name: str | None) -> Any:
    """The frame of the data plate around ``site``: the one named ``plate_name``, else the one
    whose (sub)sample size is the number of rows of the data."""
    frames = [f for f in site.frames if f.dim is not None]
    if plate_name is not None:
        found = [f for f in frames if f.name == plate_name]
    else:
        found = [f for f in frames if f.size in (rows, -1)]
    if not found:
        where = f"named '{plate_name}'" if plate_name else f"of size {rows} (the rows of the data)"
        raise InputError(
            f"guide site '{site.name}' is in no plate {where}; a per-datapoint Gaussian needs the "
            "site inside the data plate (pass plate_name= to name it)"
        )
    frame = found[-1]
    if frame.size == -1:
        raise InputError(
            f"the data plate '{frame.name}' around guide site '{site.name}' has no size "
            f"(pyro.plate('{frame.name}') without a size); give it one: pyro.plate('{frame.name}', len(x))"
        )
    return frame


def amortized_site(
    guide: Callable, args: tuple, kwargs: dict, site: str, *, plate_name: str | None = None, purpose: str
) -> tuple[Site, Any]:
    """One run of the amortized guide, hidden from every enclosing handler (gradients flow as
    in the guide): the recorded site ``site`` and its data plate frame. The guide must have
    no other latent site (``purpose`` names what needs that, for the error)."""
    with poutine.block():
        sites = record_program(guide, args, kwargs).sites
    if site not in sites or sites[site].is_observed:
        latents = [n for n, s in sites.items() if not s.is_observed]
        raise InputError(f"the guide has no latent sample site '{site}' (its latents: {latents}); pass site=")
    others = [n for n, s in sites.items() if n != site and not s.is_observed]
    if others:
        raise InputError(
            f"{purpose} refits one Gaussian site per datapoint, and the guide has other latent sites "
            f"{others}; it needs a guide whose only latent is '{site}'"
        )
    return sites[site], data_frame(sites[site], data_rows(args), plate_name)


def latent_size(local: LocalGaussian) -> int:
    """:math:`d`, the dimension of one datapoint's latent (sigma points need one event dim)."""
    if local.kind == MVN or local.event == 1:
        return local.params[0].shape[-1]
    if local.event == 0:
        return 1
    raise InputError(
        f"sigma points need a latent with at most one event dimension; '{local.site}' has {local.event}"
    )


def sigma_point_hooks(local: LocalGaussian, *, nesting: int) -> HookFactory:
    """Value hooks drawing the local site at :math:`2d` fixed points
    :math:`z = \\mu + L(\\pm\\sqrt d\\, e_i)` (the unscented transform's symmetric sigma points,
    equal weights): their mean is :math:`\\mu` and covariance :math:`LL^\\top` exactly, so the
    particle average of any function quadratic in :math:`z` (the log-likelihood of a
    linear-Gaussian model) is its exact expectation, and the ELBO's gradient is deterministic."""
    d = latent_size(local)

    def noise(like: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(d, dtype=like.dtype, device=like.device) * math.sqrt(d)
        return torch.cat([eye, -eye])  # (2d, d)

    def value(msg: Message, eps: torch.Tensor) -> torch.Tensor:
        fn = msg["fn"]
        while isinstance(fn, Independent):
            fn = fn.base_dist
        if isinstance(fn, MultivariateNormal):
            return fn.loc + (fn.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
        return fn.loc + fn.scale * eps

    def factory(k: int | None) -> Callable[[Message], torch.Tensor | None]:
        def hook(msg: Message) -> torch.Tensor | None:
            if msg["name"] != local.site:
                return None
            eps = noise(local.params[0])
            if k is not None:
                return value(msg, eps[k] if local.event or local.kind == MVN else eps[k, 0])
            event = (d,) if local.event or local.kind == MVN else ()
            return value(msg, eps.reshape((2 * d,) + (1,) * nesting + event))  # particles left of the plates

        return hook

    return factory


def local_elbo(
    model: Callable,
    local: LocalGaussian,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int = 1,
    sigma_points: bool = False,
    plan: ProgramPlan | None = None,
) -> torch.Tensor:
    """The ELBO of each datapoint under the local guide, shape ``(B,)``, differentiable in
    :attr:`LocalGaussian.params`:

    .. math::
        \\mathcal L_n(\\lambda_n) = E_{q_{\\lambda_n}}[\\log p(x_n \\mid z)]
        - \\mathrm{KL}(q_{\\lambda_n}(z) \\,\\|\\, p(z)),

    the KL in closed form where PyTorch registers it, the expectation by ``num_particles``
    reparameterized draws (or, with ``sigma_points``, the :math:`2d` sigma points of
    :func:`sigma_point_hooks`). Terms of the true, unscaled model (no :math:`N/B`, no KL
    weight): each datapoint's ELBO, which is what its parameters are fitted to."""
    plan = plan if plan is not None else plan_program(model, local, args, kwargs, plate_name=local.plate_name)
    hooks = None
    if sigma_points:
        num_particles, hooks = 2 * latent_size(local), sigma_point_hooks(local, nesting=plan.nesting)
    run = run_particles(model, local, args, kwargs, plan=plan, num_particles=num_particles, hooks=hooks)
    terms = collect_terms(run, scaled=False, analytic_kl=True)
    terms.require_per_datapoint()
    return terms.log_weight.mean(0)
