"""VIMCO: the multi-sample bound with leave-one-out control variates."""

from __future__ import annotations

import math
from typing import Unpack

import torch

from pyro_vae.errors import InputError
from pyro_vae.infer.log_mean_exp import log_mean_exp
from pyro_vae.infer.loss import ParticleLoss, ParticleOptions
from pyro_vae.infer.terms import Terms


def leave_one_out_bounds(log_w: torch.Tensor) -> torch.Tensor:
    """:math:`\\hat{\\mathcal L}_{-k} = \\log \\frac1K \\big(\\sum_{j \\ne k} w_j + \\hat w_{-k}\\big)`
    for each :math:`k`, with :math:`\\log \\hat w_{-k} = \\frac1{K-1} \\sum_{j \\ne k} \\log w_j`
    (the geometric mean of the others); ``log_w`` is ``(K, ...)``, so is the result."""
    k = log_w.shape[0]
    others = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)
    eye = torch.eye(k, dtype=torch.bool, device=log_w.device).reshape((k, k) + (1,) * (log_w.dim() - 1))
    # [k, j] = l_j, or the mean of the others if j == k
    replaced = torch.where(eye, others.unsqueeze(1), log_w.unsqueeze(0))
    return replaced.logsumexp(1) - math.log(k)


class VIMCO(ParticleLoss):
    """Variational inference for Monte Carlo objectives [1]: maximize
    :math:`\\sum_n \\mathcal L_K(x_n)`, :math:`\\mathcal L_K = E\\big[\\log \\frac1K \\sum_k w_k\\big]`,
    :math:`w_k = p(x_n, z_k) / q(z_k \\mid x_n)`, with gradient

    .. math::
        \\sum_k \\big(\\hat{\\mathcal L} - \\hat{\\mathcal L}_{-k}\\big)\\,
        \\nabla_\\phi \\log q(z_k \\mid x_n) + \\sum_k \\tilde w_k\\, \\nabla \\log w_k,

    :math:`\\tilde w_k = w_k / \\sum_j w_j`, where the control variate
    :math:`\\hat{\\mathcal L}_{-k}` (:func:`leave_one_out_bounds`) replaces :math:`w_k` by the
    geometric mean of the other weights. It does not depend on :math:`z_k`, so the estimator
    is unbiased for :math:`\\nabla \\mathcal L_K` (tested against the exact gradient by
    enumeration of all :math:`K`-tuples), and each sample's signal is "how much better
    than the others" it is. The score term covers guide sites without ``rsample``;
    reparameterized ones get the pathwise gradient through :math:`\\log w_k`.

    Under a subsampled data plate the minibatch sum is scaled by :math:`N/B` *outside* each
    datapoint's log-mean-exp, so the loss is an unbiased estimate of the full-data
    :math:`-\\sum_n \\mathcal L_K(x_n)` (unlike Pyro's ``RenyiELBO(alpha=0)``, which is also
    no help here: it gives discrete guide sites a zero gradient). Extra training terms
    (auxiliary sites, guide factors) are averaged over particles and added outside the bound.

    :param num_particles: :math:`K \\ge 2`.

    References:
        [1] Mnih & Rezende (2016), "Variational inference for Monte Carlo objectives", ICML.
        [2] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """

    def __init__(
        self,
        *,
        num_particles: int = 5,
        **options: Unpack[ParticleOptions],
    ) -> None:
        if isinstance(num_particles, int) and not isinstance(num_particles, bool) and num_particles < 2:
            raise InputError(f"VIMCO needs num_particles >= 2 (leave-one-out), got {num_particles}")
        super().__init__(num_particles=num_particles, **options)

    def surrogate(self, terms: Terms) -> tuple[torch.Tensor, torch.Tensor]:
        terms.require_per_datapoint()
        log_w = terms.log_weight
        bound = log_mean_exp(log_w)  # (B,)
        extra = terms.extra.mean(0) if terms.extra is not None else 0.0
        objective = terms.batch_objective(bound + extra)
        surrogate = objective
        if terms.log_guide_score is not None and torch.is_grad_enabled():
            signal = bound.detach() - leave_one_out_bounds(log_w.detach())  # (K, B)
            score = terms.data_scale * (signal * terms.log_guide_score).sum()
            surrogate = surrogate + (score - score.detach())
        return objective, surrogate
