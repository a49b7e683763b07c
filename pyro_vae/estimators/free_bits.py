"""Free bits: the ELBO with a floor of :math:`\\lambda` nats under the KL of every latent group."""

from __future__ import annotations

from collections.abc import Callable
from typing import Unpack

import torch
from torch.distributions import Distribution, Independent, kl_divergence

from pyro_vae._checks import check_nonnegative
from pyro_vae.errors import InputError
from pyro_vae.infer.layout import PlateLayout
from pyro_vae.infer.loss import ParticleOptions
from pyro_vae.infer.mean_field_elbo import MeanFieldELBO
from pyro_vae.infer.particles import VECTORIZED, ParticleRun
from pyro_vae.infer.sites import Site
from pyro_vae.infer.terms import collect_terms


def _base(fn: Distribution) -> Distribution:
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn


def _dimension_kl(q: Site, p: Site) -> torch.Tensor | None:
    """:math:`\\mathrm{KL}(q_j \\| p_j)` per element of the site's batch and event, when the
    site's guide and prior factorize over the event (``Independent`` of univariate
    distributions) and PyTorch registers their KL; ``None`` otherwise."""
    base_q, base_p = _base(q.fn), _base(p.fn)
    if tuple(base_q.event_shape) or tuple(base_p.event_shape):
        return None
    try:
        kl = kl_divergence(base_q, base_p)
    except NotImplementedError:
        return None
    return kl.expand(torch.Size(q.fn.batch_shape) + q.fn.event_shape)


def _group_kls(
    site: Site, model_site: Site, layout: PlateLayout, k: int, per_dimension: bool
) -> torch.Tensor:
    """The KL of each group of ``site`` per particle and datapoint, ``(k, B, groups)``:
    one group per dimension (the event and any plate inside the data plate) when the KL
    factorizes and ``per_dimension``, else one group, the site (closed form where
    registered, else the sampled :math:`\\log q - \\log p`)."""
    kl = _dimension_kl(site, model_site) if per_dimension else None
    if kl is None:
        try:
            whole = kl_divergence(site.fn, model_site.fn)
        except NotImplementedError:
            whole = site.log_prob() - model_site.fn.log_prob(site.value)
        return layout.per_datapoint(site, whole, k).unsqueeze(-1)
    event = len(site.fn.event_shape)
    if site.mask is not None and isinstance(site.mask, torch.Tensor):
        kl = kl * site.mask.reshape(site.mask.shape + (1,) * event)
    ndim = layout.nesting + 1 + event
    kl = kl.reshape((1,) * (ndim - kl.dim()) + kl.shape)
    axis = 1 + layout.nesting + layout.data_dim  # type: ignore[operator]
    kl = kl.expand(*kl.shape[:axis], layout.size, *kl.shape[axis + 1 :]) if kl.shape[axis] == 1 else kl
    kl = kl.movedim(axis, 1)
    return kl.reshape(kl.shape[0], layout.size, -1).expand(k, -1, -1)


class FreeBitsELBO(MeanFieldELBO):
    """The free-bits objective [1] for reparameterized guides:

    .. math::
        \\mathcal L_\\lambda = \\sum_n E_{q(z \\mid x_n)}[\\log p(x_n \\mid z)]
        - N \\sum_j \\max\\bigl(\\lambda, \\overline{\\mathrm{KL}}_j\\bigr),
        \\qquad \\overline{\\mathrm{KL}}_j = \\frac1B \\sum_{n \\in \\text{batch}}
        \\mathrm{KL}(q(z_j \\mid x_n) \\,\\|\\, p(z_j)),

    where the groups :math:`j` are the dimensions of each latent site when its guide and
    prior factorize over them (``per_dimension=True``, the default: e.g. a diagonal
    Gaussian with a standard-normal prior) and the latent sites otherwise, and
    :math:`\\overline{\\mathrm{KL}}_j` is averaged over the minibatch and the particles. A group
    whose KL is below :math:`\\lambda` costs :math:`\\lambda` whatever the guide does, so its
    gradient holds no pull toward the prior: the objective cannot be raised by collapsing
    a group below :math:`\\lambda` nats, which keeps latent dimensions in use.

    It is the ELBO (:class:`~pyro_vae.infer.MeanFieldELBO`, closed-form KL terms where
    registered) minus :math:`N \\sum_j s_j \\max(0, \\lambda - \\overline{\\mathrm{KL}}_j)`, with
    :math:`s_j` the site's own scale (a :math:`\\beta` or KL weight): equal to the ELBO's when
    every group's KL is at least :math:`\\lambda`, and with :math:`\\partial/\\partial \\phi = 0`
    through the KL of a group below it (tested in closed form). Latents outside the data
    plate keep their ELBO terms.

    :param free_bits: :math:`\\lambda \\ge 0`, nats per group (0: the ELBO).
    :param per_dimension: one group per latent dimension (else one per site).

    References:
        [1] Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), "Improved
        variational inference with inverse autoregressive flow", NeurIPS.
    """

    linear_objective = False

    def __init__(
        self, free_bits: float, *, per_dimension: bool = True, **options: Unpack[ParticleOptions]
    ) -> None:
        check_nonnegative(free_bits, "free bits")
        super().__init__(**options)
        self.free_bits = float(free_bits)
        self.per_dimension = bool(per_dimension)

    def group_kls(self, run: ParticleRun) -> list[tuple[str, torch.Tensor, float]]:
        """``(site, KL per group averaged over batch and particles, relative scale)`` for
        every latent guide site in the data plate that the model has."""
        layout = run.layout
        k = run.num_particles if run.mode == VECTORIZED else 1
        out = []
        for name, site in run.passes[0][1].items():
            model_site = run.passes[0][0].get(name)
            if site.is_observed or model_site is None or model_site.is_observed:
                continue
            if not layout.in_data_plate(site) or site.mask is False:
                continue
            scale = site.scale / layout.data_scale
            if isinstance(scale, torch.Tensor):
                if scale.numel() != 1:
                    raise InputError(f"free bits need one scale for site '{name}', not a tensor of scales")
                scale = float(scale)
            if scale == 0:
                continue
            kls = torch.cat(
                [_group_kls(g[name], m[name], layout, k, self.per_dimension) for m, g in run.passes], 0
            )
            out.append((name, kls.mean((0, 1)), scale))
        return out

    def objective_and_surrogate(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        run = self.particles(model, guide, args, kwargs)
        terms = collect_terms(run, scaled=True, analytic_kl=True)
        objective = terms.batch_objective(terms.training_weight().mean(0))
        if self.free_bits > 0:
            num_data = terms.data_scale * run.layout.size
            for _, kl, scale in self.group_kls(run):
                objective = objective - num_data * scale * (self.free_bits - kl).clamp(min=0).sum()
        return objective, objective
