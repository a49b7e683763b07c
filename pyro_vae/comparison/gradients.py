"""Repeated gradient estimates at fixed parameters: their mean, variance, SNR and bias."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.estimators.enumeration import DEFAULT_MAX_CONFIGURATIONS, configurations, enumerate_terms
from pyro_vae.infer.particles import probing, record

GROUPS = ("guide", "model")


def parameter_groups(
    model: Callable, guide: Callable, *args: Any, **kwargs: Any
) -> dict[str, dict[str, torch.Tensor]]:
    """The unconstrained parameters of the program, split by use: ``"guide"`` (the encoder:
    every parameter the guide's log-density :math:`\\log q(z \\mid x)` depends on) and
    ``"model"`` (the rest the program reads). Where ``pyro.module`` is called does not
    matter: a network registered whole in the model (``pyro.module("ss_vae", self)``) still
    has its encoder in the guide group. Registers the parameters in the current parameter
    store if they are not there yet; one run with modules in eval mode and the random number
    generators forked."""
    names: list[str] = []
    with probing(args, gradients=True):
        _, guide_sites = record(model, guide, args, kwargs, params=names)
    store = pyro.get_param_store()
    params = {name: store.get_param(name).unconstrained() for name in names}
    terms = [s.log_prob().sum() for s in guide_sites.values() if not s.is_observed]
    log_q = sum(terms[1:], terms[0]) if terms else torch.zeros(())  # in the program's dtype and device
    trainable = [(n, p) for n, p in params.items() if p.requires_grad]
    grads = (
        torch.autograd.grad(log_q, [p for _, p in trainable], allow_unused=True)
        if log_q.requires_grad and trainable
        else [None] * len(trainable)
    )
    used = {n for (n, _), g in zip(trainable, grads, strict=True) if g is not None}
    return {
        "guide": {n: p for n, p in params.items() if n in used},
        "model": {n: p for n, p in params.items() if n not in used},
    }


def _flat(grads: list[torch.Tensor | None], params: list[torch.Tensor]) -> torch.Tensor:
    if not params:
        return torch.zeros(0)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def gradient_samples(
    model: Callable,
    guide: Callable,
    *args: Any,
    loss: Any,
    num_samples: int,
    groups: dict[str, dict[str, torch.Tensor]] | None = None,
    **kwargs: Any,
) -> Iterator[dict[str, torch.Tensor]]:
    """``num_samples`` independent gradient estimates of the *objective* (the negated loss),
    one dict ``{group: flat gradient}`` each, at the current parameters (which are not
    changed). Parameters the loss itself owns (a neural baseline) get their gradients too
    but are not reported, and their ``.grad`` is cleared."""
    check_positive_int(num_samples, "num_samples")
    if groups is None:
        groups = parameter_groups(model, guide, *args, **kwargs)
    every = [p for g in groups.values() for p in g.values()]
    for _ in range(num_samples):
        for _, p in pyro.get_param_store().named_parameters():
            p.grad = None
        for p in every:
            p.grad = None
        loss.loss_and_grads(model, guide, *args, **kwargs)
        yield {
            name: -_flat([p.grad for p in g.values()], list(g.values())).detach()
            for name, g in groups.items()
        }
    for _, p in pyro.get_param_store().named_parameters():
        p.grad = None


@dataclass(frozen=True)
class Reference:
    """The gradient the estimators are held against.

    :ivar gradient: per parameter group, flat.
    :ivar variance: per group, the per-coordinate variance of ``gradient`` itself (zeros
        when it is exact); folded into the standard error of every bias.
    :ivar exact: whether it is exact (every latent of the guide enumerated).
    :ivar label: what it is, in words, for tables and files.
    """

    gradient: dict[str, torch.Tensor]
    variance: dict[str, torch.Tensor]
    exact: bool
    label: str


def _objective_gradient(objective: torch.Tensor, groups: dict[str, dict[str, torch.Tensor]]) -> dict:
    out = {}
    for name, g in groups.items():
        params = list(g.values())
        grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True) if params else []
        out[name] = _flat(list(grads), params).detach()
    return out


def exact_gradient(
    model: Callable,
    guide: Callable,
    *args: Any,
    groups: dict[str, dict[str, torch.Tensor]],
    num_particles: int = 1,
    max_configurations: int = DEFAULT_MAX_CONFIGURATIONS,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """The exact gradient of the ELBO (``num_particles=1``) or of :math:`\\mathcal L_K` for the
    batch, scaled like the estimators (:math:`N/B`), by enumeration; refuses guides with
    reparameterized sites, whose expectation enumeration does not compute (see
    :func:`reference_gradient`)."""
    terms = enumerate_terms(model, guide, *args, max_configurations=max_configurations, scaled=True, **kwargs)
    if not terms.exact:
        raise InputError(
            "the guide has reparameterized sites besides the discrete ones, so enumeration gives no "
            "exact gradient; use reference_gradient for a Monte Carlo reference with its error"
        )
    return _objective_gradient(terms.objective(num_particles), groups)


def reference_gradient(
    model: Callable,
    guide: Callable,
    *args: Any,
    groups: dict[str, dict[str, torch.Tensor]],
    num_particles: int = 1,
    max_configurations: int = DEFAULT_MAX_CONFIGURATIONS,
    draws: int = 100,
    repeats: int = 20,
    **kwargs: Any,
) -> Reference:
    """The gradient of the ELBO (``num_particles=1``) or of :math:`\\mathcal L_K` for the batch,
    scaled like the estimators (:math:`N/B`), with the discrete guide sites summed out by
    enumeration (:func:`~pyro_vae.estimators.enumerate_terms`).

    When every latent of the guide is discrete the sum is the whole expectation and the
    reference is exact. When the guide also has reparameterized sites (M2, the SS-VAE), they
    are averaged over ``draws`` draws per configuration, ``repeats`` times independently: the
    reference is then a Monte Carlo estimate, labelled as such, whose variance is returned
    so that biases are judged against both errors. :math:`\\mathcal L_K` for :math:`K > 1` is
    only available exactly.
    """
    check_positive_int(draws, "draws")
    check_positive_int(repeats, "repeats", minimum=2)
    _, continuous = configurations(model, guide, args, kwargs, max_configurations=max_configurations)
    if not continuous:
        gradient = exact_gradient(
            model,
            guide,
            *args,
            groups=groups,
            num_particles=num_particles,
            max_configurations=max_configurations,
            **kwargs,
        )
        zeros = {k: torch.zeros_like(v) for k, v in gradient.items()}
        return Reference(gradient, zeros, True, "exact gradients by enumeration")
    if num_particles > 1:
        raise InputError(
            f"the gradient of L_{num_particles} is only available exactly, and this guide has "
            "reparameterized sites besides the enumerated ones"
        )
    samples = []
    for _ in range(repeats):
        t = enumerate_terms(
            model, guide, *args, max_configurations=max_configurations, scaled=True, draws=draws, **kwargs
        )
        samples.append(_objective_gradient(t.objective(), groups))
    stacked = {k: torch.stack([s[k] for s in samples]) for k in groups}
    return Reference(
        gradient={k: v.mean(0) for k, v in stacked.items()},
        variance={k: v.var(0) / repeats for k, v in stacked.items()},
        exact=False,
        label=(
            f"Monte Carlo reference: discrete sites enumerated, reparameterized sites averaged over "
            f"{draws * repeats} draws per configuration (its SE folded into the bias SE)"
        ),
    )


@dataclass
class GradientMoments:
    """Running mean and variance of flat gradient estimates (Welford's update, float64)."""

    count: int = 0
    _mean: torch.Tensor | None = None
    _m2: torch.Tensor | None = None

    def update(self, sample: torch.Tensor) -> None:
        s = sample.detach().double()
        self.count += 1
        if self._mean is None or self._m2 is None:
            self._mean, self._m2 = s.clone(), torch.zeros_like(s)
            return
        delta = s - self._mean
        self._mean = self._mean + delta / self.count
        self._m2 = self._m2 + delta * (s - self._mean)

    @property
    def mean(self) -> torch.Tensor:
        assert self._mean is not None
        return self._mean

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased per-coordinate variance of one estimate."""
        assert self._m2 is not None and self.count > 1
        return self._m2 / (self.count - 1)


@dataclass(frozen=True)
class GradientSummary:
    """Summary of repeated gradient estimates of one parameter group.

    :ivar variance: :math:`\\sum_i \\mathrm{Var}(\\hat g_i)`, the trace of the covariance of
        one estimate.
    :ivar snr: :math:`\\lVert E \\hat g \\rVert / \\sqrt{\\sum_i \\mathrm{Var}(\\hat g_i)}`,
        the signal-to-noise ratio of one estimate (Rainforth et al. [1] use the per-coordinate
        ratio; this is its norm-based aggregate, which is defined for parameters with zero
        variance too).
    :ivar snr_median: the median over coordinates of the per-coordinate ratio
        :math:`|E \\hat g_i| / \\mathrm{sd}(\\hat g_i)` [1] (coordinates with zero variance left
        out; for an even count, the lower of the two middle values, as ``torch.median``).
    :ivar bias: :math:`\\lVert E \\hat g - g \\rVert` against the exact gradient, NaN when it
        is unknown; ``bias_se`` its Monte Carlo standard error
        :math:`\\sqrt{\\sum_i \\mathrm{Var}(\\hat g_i) / S + \\sum_i \\mathrm{Var}(g_i)}`, the second
        sum the reference's own variance (zero when it is exact); a bias below about two of
        these is indistinguishable from zero.
    :ivar relative_bias: ``bias / ||g||``.

    References:
        [1] Rainforth et al. (2018), "Tighter variational bounds are not necessarily better", ICML.
    """

    num_parameters: int
    num_samples: int
    mean_norm: float
    variance: float
    snr: float
    snr_median: float
    bias: float = math.nan
    bias_se: float = math.nan
    relative_bias: float = math.nan


def _median_ratio(mean: torch.Tensor, var: torch.Tensor) -> float:
    keep = var > 0
    if not keep.any():
        return math.inf
    return (mean[keep].abs() / var[keep].sqrt()).median().item()


def summarize_gradients(
    moments: GradientMoments, exact: torch.Tensor | None = None, exact_variance: torch.Tensor | None = None
) -> GradientSummary:
    """:class:`GradientSummary` of accumulated estimates, with bias against the reference
    ``exact`` if given; ``exact_variance`` (per coordinate, of the reference itself) is added
    to the estimates' variance of the mean in the bias's standard error."""
    mean, var = moments.mean, moments.variance
    total_var = var.sum().item()
    mean_norm = mean.norm().item()
    out = {
        "num_parameters": mean.numel(),
        "num_samples": moments.count,
        "mean_norm": mean_norm,
        "variance": total_var,
        "snr": mean_norm / math.sqrt(total_var) if total_var > 0 else math.inf,
        "snr_median": _median_ratio(mean, var),
    }
    if exact is not None:
        bias = (mean - exact.double().to(mean.device)).norm().item()
        exact_norm = exact.double().norm().item()
        out |= {
            "bias": bias,
            "bias_se": math.sqrt(
                total_var / moments.count
                + (exact_variance.double().sum().item() if exact_variance is not None else 0.0)
            ),
            "relative_bias": bias / exact_norm if exact_norm > 0 else math.nan,
        }
    return GradientSummary(**out)
