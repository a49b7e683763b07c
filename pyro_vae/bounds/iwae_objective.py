"""The importance-weighted training objective, correct under minibatch subsampling."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.subsample_messenger import _Subsample

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.infer.detach import detach_distribution
from pyro_vae.infer.per_datapoint import (
    data_frame,
    max_plate_nesting,
    particle_traces,
    replay_model,
    site_terms,
)

GRADIENTS = ("standard", "stl", "dreg")


class IWAE(ELBO):
    """Maximize :math:`\\sum_n \\mathcal L_K(x_n)`, the importance-weighted bound [1], as a Pyro loss.

    With a minibatch :math:`B` of :math:`N` datapoints (``pyro.plate("data", N, subsample=...)``)
    the estimate is :math:`\\frac NB \\sum_{n \\in B} \\log \\frac1K \\sum_k w_{nk}`: the scale is
    applied *outside* each datapoint's log-mean-exp, so it is an unbiased estimate of the
    full-data objective (Pyro's ``RenyiELBO(alpha=0)`` scales inside it, which is not).

    Gradients for the guide parameters :math:`\\phi` (reparameterized guides), with
    :math:`\\tilde w_k = w_k / \\sum_j w_j` and :math:`\\log w_k` evaluated with :math:`\\phi`
    held fixed inside :math:`\\log q` (only the path through :math:`z_k(\\phi)` differentiated):

    - ``"standard"``: :math:`\\nabla_\\phi \\log \\frac1K \\sum_k w_k` (the IWAE estimator);
    - ``"stl"``: :math:`\\sum_k \\tilde w_k \\, \\nabla_\\phi \\log w_k(z_k(\\phi))`, "sticking the
      landing" [2]: zero variance when :math:`q` is the exact posterior. Unbiased for
      :math:`K = 1`; for :math:`K > 1` it is biased [3];
    - ``"dreg"``: :math:`\\sum_k \\tilde w_k^2 \\, \\nabla_\\phi \\log w_k(z_k(\\phi))`, doubly
      reparameterized [3]: unbiased for every :math:`K`, also zero variance at the exact posterior.

    Model parameters :math:`\\theta` always get the standard gradient
    :math:`\\sum_k \\tilde w_k \\nabla_\\theta \\log p(x, z_k)`. STL and DReG run the model
    twice (once more with :math:`z` detached, to keep the :math:`\\theta` gradient exact).

    :param num_particles: :math:`K`.
    :param gradient: ``"standard"``, ``"stl"`` or ``"dreg"``.
    :param plate_name: the data plate.

    References:
        [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
        [2] Roeder, Wu & Duvenaud (2017), "Sticking the landing: simple, lower-variance
        gradient estimators for variational inference", NeurIPS.
        [3] Tucker, Lawson, Gu & Maddison (2019), "Doubly reparameterized gradient
        estimators for Monte Carlo objectives", ICLR.
    """

    def __init__(
        self, *, num_particles: int = 5, gradient: str = "standard", plate_name: str = "data"
    ) -> None:
        check_positive_int(num_particles, "num_particles")
        if gradient not in GRADIENTS:
            raise InputError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        super().__init__(num_particles=num_particles)
        self.gradient = gradient
        self.plate_name = plate_name
        self._nesting: int | None = None

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError("IWAE traces all particles at once; it has no per-particle traces")

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """:math:`-\\frac NB \\sum_{n \\in B} \\widehat{\\mathcal L}_K(x_n)`, whose gradient is the
        chosen estimator."""
        return self._objective(model, guide, args, kwargs, self.gradient)

    def _objective(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, gradient: str
    ) -> torch.Tensor:
        if self._nesting is None:
            self._nesting = max_plate_nesting(model, guide, *args, **kwargs)
        k, nesting = self.num_particles, self._nesting
        model_trace, guide_trace = particle_traces(model, guide, args, kwargs, k, nesting)
        frame = data_frame(model_trace, self.plate_name)
        common = (self.plate_name, frame.dim, frame.size, k, nesting + 1)
        log_p = site_terms(model_trace, *common, observed=True)
        log_prior = site_terms(model_trace, *common, observed=False)
        if log_prior is not None:
            log_p = log_p + log_prior
        log_q = site_terms(guide_trace, *common, observed=None)
        log_w = log_p - log_q if log_q is not None else log_p
        bound = log_w.logsumexp(0) - math.log(k)  # one value per datapoint
        if gradient != "standard" and log_q is not None:
            bound = self._path_surrogate(
                model, args, kwargs, guide_trace, log_w, log_p, common, bound, gradient
            )
        scale = (frame.full_size or frame.size) / frame.size
        return -scale * bound.sum()

    def _path_surrogate(self, model, args, kwargs, guide_trace, log_w, log_p, common, bound, gradient):
        """Same value as ``bound``; gradients: standard for θ, STL or DReG for φ."""
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
                continue
            if not site["fn"].has_rsample:
                raise InputError(f"{gradient} gradients need reparameterized guide sites; '{name}' is not")
        detached = poutine.Trace()
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample":
                detached.add_node(name, **{**site, "value": site["value"].detach()})
        model_trace_sg = replay_model(model, detached, args, kwargs, self.num_particles, self._nesting)
        log_p_sgz = site_terms(model_trace_sg, *common, observed=None)  # log p(x, sg(z))
        log_q_stop = site_terms(
            guide_trace,
            *common,
            observed=None,
            log_prob=lambda s: detach_distribution(s["fn"]).log_prob(s["value"]),
        )
        log_q = log_p - log_w
        weights = torch.softmax(log_w.detach(), dim=0)
        if gradient == "dreg":
            weights = weights**2
        theta = (log_p_sgz - log_q.detach()).logsumexp(0) - math.log(self.num_particles)
        phi = (weights * (log_p - log_q_stop - log_p_sgz)).sum(0)
        surrogate = theta + phi - phi.detach()
        return surrogate + (bound - surrogate).detach()

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """:math:`-\\frac NB \\sum_{n \\in B} \\widehat{\\mathcal L}_K(x_n)` as a float."""
        with torch.no_grad():  # no gradient, so the cheaper standard surrogate has the same value
            return float(self._objective(model, guide, args, kwargs, "standard"))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())
