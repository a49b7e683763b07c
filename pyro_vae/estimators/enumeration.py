"""Exact expectations over discrete guide sites by enumerating their joint support."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Unpack

import torch
from pyro.poutine.runtime import Message
from torch.distributions import Distribution, Independent

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.infer.loss import ParticleLoss, ParticleOptions
from pyro_vae.infer.particles import ProgramPlan, plan_program, probing, record, run_particles
from pyro_vae.infer.sites import ValueHook
from pyro_vae.infer.terms import Terms, collect_terms

DEFAULT_MAX_CONFIGURATIONS = 4096


def _element_support(fn: Distribution) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Values one datapoint's site can take: ``(support of one element, element positions)``.

    ``Independent`` wrappers turn batch dims of the base into per-datapoint positions; each
    position takes the base distribution's support independently.
    """
    base = fn
    while isinstance(base, Independent):
        base = base.base_dist
    if not base.has_enumerate_support:
        raise InputError(f"{type(base).__name__} has no enumerable support")
    support = base.enumerate_support(expand=False)
    support = support.reshape((support.shape[0], *tuple(base.event_shape)))
    positions = tuple(fn.event_shape[: len(fn.event_shape) - len(base.event_shape)])
    return support, positions


def site_configurations(fn: Distribution) -> torch.Tensor:
    """All values of one datapoint's site, ``(M, *event_shape)``, :math:`M = S^P` for
    :math:`P` positions with :math:`S` values each (in lexicographic order)."""
    support, positions = _element_support(fn)
    count = math.prod(positions)
    choices = torch.tensor(
        list(itertools.product(range(support.shape[0]), repeat=count)), dtype=torch.long
    ).reshape(-1, count)
    values = support[choices.to(support.device)]  # (M, P, *base_event)
    return values.reshape((values.shape[0], *positions, *support.shape[1:]))


class _Configurations:
    """Value hooks setting the enumerated guide sites to their configurations
    (``{name: (M, *event)}``), broadcast over the program's plates (without marking them
    observed): all configurations in one vectorized pass, or configuration ``k`` alone."""

    def __init__(self, values: dict[str, torch.Tensor]) -> None:
        self.values = values

    def __call__(self, index: int | None) -> ValueHook:
        def hook(msg: Message) -> torch.Tensor | None:
            value = self.values.get(msg["name"])  # type: ignore[arg-type]
            if value is None:
                return None
            fn = msg["fn"]
            batch, event = tuple(fn.batch_shape), tuple(fn.event_shape)  # type: ignore[union-attr]
            if index is None:
                shaped = value.reshape((value.shape[0],) + (1,) * (len(batch) - 1) + event)
            else:
                shaped = value[index].reshape((1,) * len(batch) + event)
            return shaped.expand(batch + event)

        return hook


@dataclass(frozen=True)
class EnumeratedTerms:
    """Every joint configuration :math:`m` of the discrete guide sites for every datapoint
    (tensors ``(M, B)``).

    :ivar log_q_discrete: :math:`\\log q(z^{\\mathrm{disc}}_m \\mid x_n)`, normalized over
        :math:`m` (``log_softmax``): for an unmasked site this changes neither the value nor
        the gradient (the log-normalizer is identically 0); a masked site (log-density 0 for
        every value, e.g. the label of a labelled datapoint in M2) gets uniform weights, so
        that it is counted once.
    :ivar log_weight: :math:`\\log p(x_n, z_m) - \\log q(z_m \\mid x_n)`; with continuous guide
        sites, averaged over ``draws`` reparameterized draws per configuration.
    :ivar extra: the extra training terms per configuration (auxiliary sites, guide factors),
        ``None`` for evaluation.
    :ivar exact: ``True`` when every latent of the guide is enumerated; ``False`` when the
        guide also has sites with ``rsample``, whose expectation is a Monte Carlo average.
    :ivar data_scale: :math:`N/B` (1 for unscaled terms).
    :ivar draws: reparameterized draws per configuration.
    """

    log_q_discrete: torch.Tensor
    log_weight: torch.Tensor
    extra: torch.Tensor | None
    exact: bool
    data_scale: float
    draws: int = 1

    @property
    def elbo(self) -> torch.Tensor:
        """:math:`\\sum_m q_m \\log w_m` per datapoint, ``(B,)``, differentiable."""
        return (self.log_q_discrete.exp() * self.log_weight).sum(0)

    def objective(self, num_particles: int = 1) -> torch.Tensor:
        """The batch objective the estimators maximize, exactly: :math:`N/B` times the sum of
        the per-datapoint ELBO (``num_particles=1``) or :math:`\\mathcal L_K`, plus the
        expected auxiliary terms. Differentiable."""
        per_point = self.elbo if num_particles == 1 else self.iwae(num_particles)
        if self.extra is not None:
            per_point = per_point + (self.log_q_discrete.exp() * self.extra).sum(0)
        return self.data_scale * per_point.sum()

    def iwae(self, num_particles: int, *, max_multisets: int = 100_000, chunk: int = 4096) -> torch.Tensor:
        """:math:`\\mathcal L_K = E\\big[\\log \\frac1K \\sum_k w_{m_k}\\big]`, :math:`m_k \\sim q`
        i.i.d., per datapoint, exactly and differentiably, ``(B,)``.

        The bound depends on the :math:`K` draws only through how often each configuration
        occurs, so the sum runs over the :math:`\\binom{M + K - 1}{K}` count vectors
        :math:`n` with multinomial probabilities
        :math:`\\frac{K!}{\\prod_m n_m!} \\prod_m q_m^{n_m}` rather than over all
        :math:`M^K` ordered tuples.
        """
        check_positive_int(num_particles, "num_particles")
        if not self.exact and num_particles > 1:
            raise InputError(
                "the exact L_K needs every latent of the guide enumerated; this guide also has "
                "reparameterized sites"
            )
        m = self.log_weight.shape[0]
        count = math.comb(m + num_particles - 1, num_particles)
        if count > max_multisets:
            raise InputError(
                f"the exact L_K sums over C(M + K - 1, K) = {count} multisets of the M = {m} "
                f"configurations (K = {num_particles}), more than max_multisets={max_multisets}"
            )
        dtype, device = self.log_weight.dtype, self.log_weight.device
        total = torch.zeros_like(self.log_weight[0])
        combos = itertools.combinations_with_replacement(range(m), num_particles)
        while block := list(itertools.islice(combos, chunk)):
            idx = torch.tensor(block, device=device)
            counts = torch.zeros(len(block), m, dtype=dtype, device=device)
            counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=dtype))
            log_coef = math.lgamma(num_particles + 1) - torch.lgamma(counts + 1).sum(1)  # (T,)
            present = (
                counts.unsqueeze(2) > 0
            )  # a configuration with q = 0 that is never drawn adds 0, not NaN
            weighted = torch.where(present, counts.unsqueeze(2) * self.log_q_discrete.unsqueeze(0), 0.0)
            log_prob = log_coef.unsqueeze(1) + weighted.sum(1)  # (T, B)
            bound = (counts.log().unsqueeze(2) + self.log_weight.unsqueeze(0)).logsumexp(1)  # (T, B)
            total = total + (log_prob.exp() * (bound - math.log(num_particles))).sum(0)
        return total


def _count(n: int) -> str:
    return str(n) if n < 10**6 else f"{n:.3g}"


def _latent_sites(
    model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> tuple[dict[str, Distribution], bool]:
    """The guide's discrete latent sites, and whether it has reparameterized ones too (one
    probe: modules in eval mode, no gradients, random number generators forked)."""
    with probing(args):
        _, guide_sites = record(model, guide, args, kwargs)
    sites, continuous = {}, False
    for name, site in guide_sites.items():
        if site.is_observed:
            continue
        if site.fn.has_rsample:
            continuous = True
        else:
            sites[name] = site.fn
    return sites, continuous


def configurations(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    max_configurations: int = DEFAULT_MAX_CONFIGURATIONS,
) -> tuple[dict[str, torch.Tensor], bool]:
    """Every joint configuration of the guide's discrete sites for one datapoint,
    ``{name: (M, *event)}``, and whether the guide also has reparameterized sites."""
    sites, continuous = _latent_sites(model, guide, args, kwargs)
    if not sites:
        raise InputError("the guide has no discrete (non-reparameterized) sites to enumerate")
    counts = {}
    for name, fn in sites.items():
        try:
            support, positions = _element_support(fn)
        except InputError as e:
            raise InputError(f"guide site '{name}' cannot be enumerated: {e}") from None
        counts[name] = support.shape[0] ** math.prod(positions)
    total = math.prod(counts.values())
    if total > max_configurations:
        detail = ", ".join(f"'{k}': {_count(v)}" for k, v in counts.items())
        raise InputError(
            f"exact enumeration needs {_count(total)} joint configurations per datapoint ({detail}), "
            f"more than max_configurations={max_configurations}"
        )
    per_site = {name: site_configurations(fn) for name, fn in sites.items()}
    grids = torch.meshgrid(*[torch.arange(counts[n]) for n in sites], indexing="ij")
    values = {n: per_site[n][g.reshape(-1).to(per_site[n].device)] for n, g in zip(sites, grids, strict=True)}
    return values, continuous


def enumerate_terms(
    model: Callable,
    guide: Callable,
    *args: Any,
    plate_name: str | None = None,
    max_configurations: int = DEFAULT_MAX_CONFIGURATIONS,
    plan: ProgramPlan | None = None,
    scaled: bool = False,
    draws: int = 1,
    vectorize: bool | None = None,
    **kwargs: Any,
) -> EnumeratedTerms:
    """Run model and guide once for every joint configuration of the discrete guide sites
    (vectorized where the program broadcasts: the configurations fill a particle plate left
    of the program's plates; one configuration at a time otherwise).

    Works for any program whose discrete latents are inside the data plate, including
    ``Independent`` sites (e.g. 20 one-hot variables in one site) and guides where one
    discrete site depends on another; the number of configurations per datapoint is the
    product of the sites' support sizes and must not exceed ``max_configurations``. Guides
    that also have reparameterized sites get ``draws`` draws of them per configuration, and
    the result is marked not exact.

    :param scaled: the terms of the training objective (site scales, extra terms) rather
        than those of the true model.
    """
    check_positive_int(draws, "draws")
    values, continuous = configurations(model, guide, args, kwargs, max_configurations=max_configurations)
    m = next(iter(values.values())).shape[0]
    draws = draws if continuous else 1
    if draws > 1:
        values = {n: v.repeat_interleave(draws, 0) for n, v in values.items()}
    if plan is None:
        plan = plan_program(model, guide, args, kwargs, plate_name=plate_name)
    run = run_particles(
        model,
        guide,
        args,
        kwargs,
        plan=plan,
        num_particles=m * draws,
        hooks=_Configurations(values),
        gumbel_max=False,
        vectorize=vectorize,
    )
    unscaled = collect_terms(run, scaled=False)
    weights = collect_terms(run, scaled=True) if scaled else unscaled
    weights.require_per_datapoint()
    assert unscaled.log_guide_score is not None  # the enumerated sites have no rsample

    def per_configuration(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(m, draws, *t.shape[1:]).mean(1)

    return EnumeratedTerms(
        log_q_discrete=per_configuration(unscaled.log_guide_score).log_softmax(0),
        log_weight=per_configuration(weights.log_weight),
        extra=per_configuration(weights.extra) if weights.extra is not None else None,
        exact=not continuous,
        data_scale=weights.data_scale,
        draws=draws,
    )


def exact_elbo(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The ELBO of each datapoint, exact in the discrete guide sites, ``(B,)``, differentiable."""
    return enumerate_terms(model, guide, *args, **kwargs).elbo


def exact_iwae(
    model: Callable, guide: Callable, *args: Any, num_particles: int, **kwargs: Any
) -> torch.Tensor:
    """:math:`\\mathcal L_K` of each datapoint, exact by summing over all :math:`K`-tuples of
    configurations, ``(B,)``, differentiable."""
    return enumerate_terms(model, guide, *args, **kwargs).iwae(num_particles)


class EnumerationELBO(ParticleLoss):
    """The ELBO with the expectation over the discrete guide sites computed exactly,

    .. math::
        \\mathcal L(x_n) = \\sum_m q_\\phi(z_m \\mid x_n)
        \\big[\\log p_\\theta(x_n, z_m) - \\log q_\\phi(z_m \\mid x_n)\\big],

    summing over every joint configuration :math:`z_m` (:func:`enumerate_terms`). Its
    gradient is the exact ELBO gradient: the reference the other estimators are compared
    with. Unlike Pyro's ``TraceEnum_ELBO`` with ``config_enumerate`` it enumerates
    ``Independent`` sites (several discrete variables in one site) jointly; it agrees with
    ``TraceEnum_ELBO`` where both apply (tested). Cost grows as the number of configurations.
    Guides that also have reparameterized sites get one draw of them per configuration: the
    sum over the discrete part is exact, the rest is the reparameterized estimator.

    :param max_configurations: refuse programs with more joint configurations per datapoint.

    References:
        [1] Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised learning with deep
        generative models", NeurIPS (summing out the label of the M2 model).
        [2] Obermeyer et al. (2019), "Tensor variable elimination for plated factor graphs", ICML.
    """

    def __init__(
        self,
        *,
        max_configurations: int = DEFAULT_MAX_CONFIGURATIONS,
        **options: Unpack[ParticleOptions],
    ) -> None:
        if options.get("num_particles", 1) != 1:
            raise InputError("EnumerationELBO sums over configurations; it takes no num_particles")
        super().__init__(**options)
        check_positive_int(max_configurations, "max_configurations")
        self.max_configurations = max_configurations

    def objective_and_surrogate(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = enumerate_terms(
            model,
            guide,
            *args,
            max_configurations=self.max_configurations,
            plan=self.plan(model, guide, args, kwargs),
            scaled=True,
            vectorize=self.vectorize_particles,
            **kwargs,
        )
        objective = t.objective()
        return objective, objective

    def surrogate(self, terms: Terms) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("EnumerationELBO sums over configurations; see objective_and_surrogate")
