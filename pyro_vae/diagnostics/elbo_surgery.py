"""ELBO surgery: the average rate split into the index-code mutual information and the
marginal KL, for any model/guide pair."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae._checks import check_positive_int, check_rows
from pyro_vae.errors import InputError
from pyro_vae.infer.guide_density import guide_log_density, per_datapoint_values
from pyro_vae.infer.modes import frozen_evaluation
from pyro_vae.infer.per_datapoint import evaluate_particles, num_rows, probe, take_rows


@dataclass(frozen=True)
class ELBOSurgery:
    """The surgery identity's three terms in nats, each with its Monte Carlo standard error:

    .. math::
        \\underbrace{\\frac1N \\sum_n \\mathrm{KL}(q(z \\mid x_n) \\,\\|\\, p(z))}_{\\texttt{average\\_kl}}
        = \\underbrace{I_q(n; z)}_{\\texttt{mutual\\_information}}
        + \\underbrace{\\mathrm{KL}(q(z) \\,\\|\\, p(z))}_{\\texttt{marginal\\_kl}},
        \\qquad q(z) = \\frac1N \\sum_n q(z \\mid x_n).

    The estimates satisfy the identity exactly (one set of draws), and
    :math:`\\hat I \\le \\log N` draw by draw (the datapoint's own component of
    :math:`\\hat q(z)` has weight :math:`1/N`).

    :ivar num_data: :math:`N`, the datapoints the aggregate posterior mixes.
    :ivar batch_size: :math:`M`, the datapoints each :math:`\\hat q(z)` sums over (``M = N``:
        the exact mixture, no bias).
    :ivar num_particles: draws per datapoint.
    """

    mutual_information: float
    mutual_information_se: float
    marginal_kl: float
    marginal_kl_se: float
    average_kl: float
    average_kl_se: float
    num_data: int
    batch_size: int
    num_particles: int

    @property
    def log_num_data(self) -> float:
        """:math:`\\log N`, the upper bound of :math:`I(n; z)`."""
        return math.log(self.num_data)

    def summary(self) -> dict[str, float]:
        return {
            "mutual_information": self.mutual_information,
            "mutual_information_se": self.mutual_information_se,
            "marginal_kl": self.marginal_kl,
            "marginal_kl_se": self.marginal_kl_se,
            "average_kl": self.average_kl,
            "average_kl_se": self.average_kl_se,
            "log_num_data": self.log_num_data,
            "num_data": self.num_data,
            "batch_size": self.batch_size,
            "num_particles": self.num_particles,
        }


def _log_weights(m: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """``(M, M)`` log weights of the stratified estimate of :math:`q(z_i)`: a datapoint's own
    component :math:`1/N`, each of the other :math:`M-1` in the batch :math:`(N-1)/(N(M-1))`."""
    own = -math.log(n)
    other = math.log(n - 1) - math.log(n) - math.log(m - 1) if m > 1 else -math.inf
    w = torch.full((m, m), other, dtype=like.dtype, device=like.device)
    w.fill_diagonal_(own)
    return w


def _batch_parts(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_data: int,
    num_particles: int,
    plan: Any,
    max_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per draw ``(K, M)``: :math:`\\log q(z_{ki} \\mid x_i) - \\log \\hat q(z_{ki})` and
    :math:`\\log \\hat q(z_{ki}) - \\log p(z_{ki})` for the ``M`` rows of ``args``."""
    run, terms = evaluate_particles(model, guide, args, kwargs, num_particles=num_particles, plan=plan)
    values = per_datapoint_values(run)
    m, k = terms.log_guide.shape[1], num_particles
    chunk = max(1, max_rows // m)
    pairs = []
    with frozen_evaluation():
        for start in range(0, k * m, chunk):
            part = {name: v[start : start + chunk] for name, v in values.items()}
            pairs.append(guide_log_density(guide, args, kwargs, part, plan=plan))
    log_q = torch.cat(pairs, 0).reshape(k, m, m)  # [k, i, j] = log q(z_ki | x_j)
    own = torch.diagonal(log_q, dim1=1, dim2=2)
    if not torch.allclose(
        own, terms.log_guide, rtol=1e-4, atol=1e-4 * (1 + terms.log_guide.abs().max().item())
    ):
        raise InputError(
            "the guide's density at its own draws differs between two runs: the guide is not a "
            "function of its arguments alone (it draws values outside sample sites, or its "
            "modules change in eval mode), so q(z | x_n) cannot be evaluated at other draws"
        )
    log_marginal = torch.logsumexp(log_q + _log_weights(m, num_data, log_q), dim=2)  # log q^(z_ki)
    return terms.log_guide - log_marginal, log_marginal - terms.log_prior


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean over ``(K, N)`` draws and the Monte Carlo error of the mean of the per-datapoint
    particle averages, :math:`\\sqrt{\\sum_n s_n^2 / K} / N`; with one particle, the error
    across datapoints."""
    k, n = values.shape
    mean = values.mean().item()
    if k > 1:
        return mean, (values.var(0).sum() / k).sqrt().item() / n
    return mean, (values[0].std() / n**0.5).item() if n > 1 else math.nan


@torch.no_grad()
def elbo_surgery(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 10,
    batch_size: int | None = None,
    max_rows: int = 50_000,
    plate_name: str | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> ELBOSurgery:
    """ELBO surgery [1]: the average KL of the guide to the prior over the ``N`` datapoints
    of ``args`` split into the index-code mutual information and the KL of the aggregate
    posterior :math:`q(z) = \\frac1N \\sum_n q(z \\mid x_n)` to the prior,

    .. math::
        \\frac1N \\sum_n \\mathrm{KL}(q(z \\mid x_n) \\| p(z)) = I_q(n; z) + \\mathrm{KL}(q(z) \\| p(z)),
        \\qquad I_q(n; z) = E_{q(z, n)}\\Bigl[\\log \\frac{q(z \\mid x_n)}{q(z)}\\Bigr] \\le \\log N.

    Both expectations are over :math:`z \\sim q(z \\mid x_i)` (``num_particles`` draws per
    datapoint); :math:`\\log q(z)` is estimated on minibatches of ``M = batch_size`` rows
    by minibatch sampling [2]: for a draw :math:`z` of datapoint :math:`i` in a batch
    :math:`B_M`,

    .. math::
        \\hat q(z) = \\frac1N q(z \\mid x_i)
        + \\frac{N-1}{N(M-1)} \\sum_{j \\in B_M, j \\ne i} q(z \\mid x_j),

    an unbiased estimate of :math:`q(z)` when the other :math:`M-1` rows of the batch are a
    uniform draw from the other :math:`N-1` (the batches split a random permutation): each
    other row :math:`j` is in the batch with probability :math:`(M-1)/(N-1)`, so its term
    contributes :math:`q(z \\mid x_j)/N` in expectation, and the datapoint's own component,
    always in its batch, has its weight :math:`1/N`. With ``M = N`` (the default for up to
    1024 rows) :math:`\\hat q = q` exactly; with ``M < N``, :math:`\\log \\hat q` is biased low (Jensen), so
    :math:`\\hat I` is biased high and the marginal KL low, by :math:`O(1/M)`.

    :math:`\\log q(z_{ki} \\mid x_j)` for every pair comes from the core
    (:func:`~pyro_vae.infer.guide_density.guide_log_density`: the guide run with the draws
    as values), so the guide may be any program whose latent sites are in the data plate;
    the prior :math:`p(z)` should not depend on the datapoint (it is evaluated in datapoint
    :math:`i`'s model run). Modules run in eval mode; nothing is differentiated; with a
    ``seed`` the random number generators are left as they were.

    :param batch_size: ``M`` (at least 2), at most ``N``; default ``N`` up to 1024 rows, else 1024.
    :param max_rows: draw-datapoint pairs evaluated in one run of the guide (bounds memory).
    :returns: :class:`ELBOSurgery`; the errors are Monte Carlo errors of the draws (see
        :func:`_mean_and_se`), not of the batch assignment.

    References:
        [1] Hoffman & Johnson (2016), "ELBO surgery: yet another way to carve up the
        variational evidence lower bound", NeurIPS Workshop on Advances in Approximate
        Bayesian Inference.
        [2] Chen, Li, Grosse & Duvenaud (2018), "Isolating sources of disentanglement in
        variational autoencoders", NeurIPS.
    """
    check_rows(args)
    check_positive_int(num_particles, "num_particles")
    check_positive_int(max_rows, "max_rows")
    n = num_rows(args)
    if batch_size is None:
        batch_size = n if n <= 1024 else 1024
    check_positive_int(batch_size, "batch_size", minimum=2 if n > 1 else 1)
    m = min(batch_size, n)
    plan = probe(model, guide, args, kwargs, plate_name)
    if plan.local_params and m < n:
        name = next(iter(plan.local_params))
        raise InputError(
            f"the guide has parameters per datapoint ('{name}'), so its {n} rows cannot be split into "
            f"batches of {m}; pass batch_size >= {n}"
        )
    with torch.random.fork_rng() if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        order = torch.randperm(n) if m < n else torch.arange(n)
        info, marginal = [], []
        starts = list(range(0, n, m))
        if n - starts[-1] == 1 and len(starts) > 1:  # no batch of one row: it has no other rows
            starts.pop()
        for start, stop in zip(starts, [*starts[1:], n], strict=True):
            index = order[start:stop].to(args[0].device)
            rows, kw = args, kwargs
            if m < n:  # every tensor with one row per datapoint, positional or keyword
                taken = take_rows((*args, *kwargs.values()), index)
                rows, kw = taken[: len(args)], dict(zip(kwargs, taken[len(args) :], strict=True))
            a, b = _batch_parts(
                model, guide, rows, kw, num_data=n, num_particles=num_particles, plan=plan, max_rows=max_rows
            )
            info.append(a)
            marginal.append(b)
    info_t, marginal_t = torch.cat(info, 1), torch.cat(marginal, 1)
    mi, mi_se = _mean_and_se(info_t)
    mk, mk_se = _mean_and_se(marginal_t)
    ak, ak_se = _mean_and_se(info_t + marginal_t)
    return ELBOSurgery(
        mutual_information=mi,
        mutual_information_se=mi_se,
        marginal_kl=mk,
        marginal_kl_se=mk_se,
        average_kl=ak,
        average_kl_se=ak_se,
        num_data=n,
        batch_size=m,
        num_particles=num_particles,
    )
