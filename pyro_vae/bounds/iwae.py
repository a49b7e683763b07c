"""The importance-weighted bound :math:`\\mathcal L_K` per datapoint, for any model/guide pair."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae._checks import check_positive_int
from pyro_vae.infer.per_datapoint import log_terms, max_plate_nesting


@dataclass(frozen=True)
class BoundEstimate:
    """A per-datapoint bound (shape ``(N,)``) with its Monte Carlo standard error.

    ``standard_error`` is the delta-method error of :math:`\\log \\hat p`:
    :math:`\\mathrm{sd}(w) / (\\sqrt K\\, \\bar w)`, computed from normalized weights.
    """

    value: torch.Tensor
    standard_error: torch.Tensor
    num_particles: int


class _LogMeanExp:
    """Streaming :math:`\\log \\frac1K \\sum_k w_k` and the spread of the weights, per datapoint,
    from chunks of log-weights of shape ``(k, B)``; memory does not grow with :math:`K`."""

    def __init__(self) -> None:
        self.max: torch.Tensor | None = None
        self.s1: torch.Tensor | None = None  # sum_k exp(lw - max)
        self.s2: torch.Tensor | None = None  # sum_k exp(2 (lw - max))
        self.count = 0

    def add(self, lw: torch.Tensor) -> None:
        chunk_max = lw.max(0).values
        if self.max is None:
            self.max = chunk_max
            self.s1 = torch.zeros_like(chunk_max)
            self.s2 = torch.zeros_like(chunk_max)
        else:
            new = torch.maximum(self.max, chunk_max)
            shift = torch.exp(self.max - new)
            self.s1, self.s2, self.max = self.s1 * shift, self.s2 * shift**2, new
        w = torch.exp(lw - self.max)
        self.s1 = self.s1 + w.sum(0)
        self.s2 = self.s2 + (w**2).sum(0)
        self.count += lw.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.count
        mean_w = self.s1 / k
        value = self.max + mean_w.log()
        if k < 2:
            return value, torch.full_like(value, math.nan)
        var_w = (self.s2 / k - mean_w**2).clamp_min(0) * k / (k - 1)
        return value, var_w.sqrt() / (mean_w * math.sqrt(k))


@torch.no_grad()
def iwae(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 50,
    particle_chunk: int | None = None,
    data_chunk: int | None = None,
    max_rows: int = 50_000,
    plate_name: str = "data",
    return_error: bool = False,
    **kwargs: Any,
) -> torch.Tensor | BoundEstimate:
    """Importance-weighted bound per datapoint [1]:

    .. math::
        \\mathcal L_K(x) = E\\Bigl[\\log \\frac1K \\sum_{k=1}^K \\frac{p(x, z_k)}{q(z_k \\mid x)}\\Bigr],
        \\qquad z_k \\sim q(z \\mid x),

    with :math:`\\mathcal L_1 = \\mathrm{ELBO} \\le \\mathcal L_K \\le \\mathcal L_{K+1} \\le \\log p(x)`
    and :math:`\\mathcal L_K \\to \\log p(x)` as :math:`K \\to \\infty`. One log-mean-exp
    *per datapoint*: unlike ``pyro.infer.Importance`` and ``vectorized_importance_weights``
    (which sum log-weights over the batch) and ``RenyiELBO(alpha=0)`` under a subsampled
    plate (which scales inside the logsumexp), this is the bound of each :math:`x_n`.

    The positional ``args`` are the data tensors (rows are datapoints) as the program takes
    them. Work is chunked over data (``data_chunk`` rows) and particles
    (``particle_chunk``), by default so that a chunk has at most ``max_rows`` particle-rows,
    and the log-mean-exp is accumulated across chunks: peak memory does not grow with
    :math:`K`. Guide sites may be discrete; no gradients are computed.

    :returns: a tensor of shape ``(N,)``, or a :class:`BoundEstimate` with the standard
        error when ``return_error=True``.

    References:
        [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """
    check_positive_int(num_particles, "num_particles")
    n = args[0].shape[0]
    data_chunk = data_chunk or max(1, min(n, max_rows // min(num_particles, max_rows)))
    particle_chunk = particle_chunk or max(1, min(num_particles, max_rows // data_chunk))
    check_positive_int(data_chunk, "data_chunk")
    check_positive_int(particle_chunk, "particle_chunk")
    nesting = max_plate_nesting(model, guide, *(a[:1] for a in args), **kwargs)
    values, errors = [], []
    for start in range(0, n, data_chunk):
        chunk = tuple(a[start : start + data_chunk] for a in args)
        acc = _LogMeanExp()
        done = 0
        while done < num_particles:
            k = min(particle_chunk, num_particles - done)
            terms = log_terms(
                model, guide, *chunk, num_particles=k, plate_name=plate_name, nesting=nesting, **kwargs
            )
            acc.add(terms.log_weight)
            done += k
        value, error = acc.result()
        values.append(value)
        errors.append(error)
    value = torch.cat(values)
    if return_error:
        return BoundEstimate(value=value, standard_error=torch.cat(errors), num_particles=num_particles)
    return value


def log_marginal(
    model: Callable, guide: Callable, *args: Any, num_particles: int = 5000, **kwargs: Any
) -> BoundEstimate:
    """The estimate :math:`\\log \\hat p(x) = \\mathcal L_K` with a large :math:`K` (default 5000)
    and its standard error, per datapoint. It is itself a (stochastic) lower bound in
    expectation, tight as :math:`K \\to \\infty` [1].

    References:
        [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """
    return iwae(model, guide, *args, num_particles=num_particles, return_error=True, **kwargs)
