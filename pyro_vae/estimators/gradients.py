"""Repeated gradient estimates at fixed parameters: their mean, variance, SNR and bias."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine

from pyro_vae._checks import check_positive_int
from pyro_vae.estimators.enumeration import enumerate_terms

GROUPS = ("guide", "model")


def parameter_groups(
    model: Callable, guide: Callable, *args: Any, **kwargs: Any
) -> dict[str, dict[str, torch.Tensor]]:
    """The unconstrained parameters of the program, split into ``"guide"`` (encoder:
    every parameter the guide uses) and ``"model"`` (decoder: the rest the model uses).
    Registers them in the current parameter store if they are not there yet."""
    with poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(guide, param_only=True).get_trace(*args, **kwargs)
        model_trace = poutine.trace(model, param_only=True).get_trace(*args, **kwargs)
    store = pyro.get_param_store()

    def params(trace: poutine.Trace, exclude: set[str]) -> dict[str, torch.Tensor]:
        return {
            name: store.get_param(name).unconstrained()
            for name, site in trace.nodes.items()
            if site["type"] == "param" and name not in exclude
        }

    guide_params = params(guide_trace, set())
    return {"guide": guide_params, "model": params(model_trace, set(guide_params))}


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


def exact_gradient(
    model: Callable,
    guide: Callable,
    *args: Any,
    groups: dict[str, dict[str, torch.Tensor]],
    num_particles: int = 1,
    max_configurations: int = 4096,
    plate_name: str = "data",
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """The exact gradient of the ELBO (``num_particles=1``) or of :math:`\\mathcal L_K` for
    the batch, scaled like the estimators (:math:`N/B`), by enumeration
    (:func:`~pyro_vae.estimators.enumerate_terms`)."""
    terms = enumerate_terms(
        model, guide, *args, plate_name=plate_name, max_configurations=max_configurations, **kwargs
    )
    objective = terms.objective(num_particles)
    out = {}
    for name, g in groups.items():
        params = list(g.values())
        grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True) if params else []
        out[name] = _flat(list(grads), params).detach()
    return out


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
        :math:`\\sqrt{\\sum_i \\mathrm{Var}(\\hat g_i) / S}` (a bias below about two of these is
        indistinguishable from zero).
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


def summarize_gradients(moments: GradientMoments, exact: torch.Tensor | None = None) -> GradientSummary:
    """:class:`GradientSummary` of accumulated estimates, with bias against ``exact`` if given."""
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
            "bias_se": math.sqrt(total_var / moments.count),
            "relative_bias": bias / exact_norm if exact_norm > 0 else math.nan,
        }
    return GradientSummary(**out)
