"""The importance-weighted training objective, correct under minibatch subsampling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Unpack

import torch

from pyro_vae.errors import InputError
from pyro_vae.infer.detach import detach_distribution
from pyro_vae.infer.log_mean_exp import log_mean_exp
from pyro_vae.infer.loss import ParticleLoss, ParticleOptions
from pyro_vae.infer.particles import VECTORIZED, ParticleRun, record_program
from pyro_vae.infer.terms import Terms, collect_terms

GRADIENTS = ("standard", "stl", "dreg")


class IWAE(ParticleLoss):
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

    gumbel_max = False

    def __init__(
        self,
        *,
        num_particles: int = 5,
        gradient: str = "standard",
        **options: Unpack[ParticleOptions],
    ) -> None:
        if gradient not in GRADIENTS:
            raise InputError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        super().__init__(num_particles=num_particles, **options)
        self.gradient = gradient

    def objective_and_surrogate(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        run = self.particles(model, guide, args, kwargs)
        terms = collect_terms(run, scaled=True)
        objective, surrogate = self.surrogate(terms)
        if self.gradient != "standard" and torch.is_grad_enabled():
            for name, site in run.passes[0][1].items():
                if not site.is_observed and not site.reparameterized:
                    raise InputError(
                        f"{self.gradient} gradients need reparameterized guide sites; '{name}' is not"
                    )
            bound = self._path_surrogate(model, args, kwargs, run, terms)
            extra = terms.extra.mean(0) if terms.extra is not None else 0.0
            surrogate = terms.batch_objective(bound + extra)
        return objective, surrogate

    def surrogate(self, terms: Terms) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`\\frac NB \\sum_{n \\in B} \\widehat{\\mathcal L}_K(x_n)` with the standard
        gradient (STL and DReG are added by :meth:`objective_and_surrogate`)."""
        terms.require_per_datapoint()
        extra = terms.extra.mean(0) if terms.extra is not None else 0.0
        objective = terms.batch_objective(log_mean_exp(terms.log_weight) + extra)
        return objective, objective

    def _path_surrogate(
        self, model: Callable, args: tuple, kwargs: dict, run: ParticleRun, terms: Terms
    ) -> torch.Tensor:
        """Same value as ``bound``; gradients: standard for θ, STL or DReG for φ. Runs the
        model once more on the detached draws, :math:`\\log p(x, \\bot z)`, and scores the
        draws under the guide with its parameters detached, :math:`\\log q_{\\bot\\phi}(z)`."""
        bound = log_mean_exp(terms.log_weight)
        particles = (run.num_particles, -(run.layout.nesting + 1)) if run.mode == VECTORIZED else None
        passes = []
        for _, guide_sites in run.passes:
            detached = {n: s.replace(value=s.value.detach()) for n, s in guide_sites.items()}
            model_sg = record_program(model, args, kwargs, replay=detached, particles=particles).sites
            stopped = {
                n: s.replace(fn=detach_distribution(s.fn))
                for n, s in guide_sites.items()
                if not s.is_observed
            }
            passes.append((model_sg, stopped))
        sg = collect_terms(
            ParticleRun(
                tuple(passes),
                run.num_particles,
                run.mode,
                plan=run.plan,
                args=run.args,
                layout=(run.layout, run.layout_error),
            ),
            scaled=True,
        )
        log_p = terms.log_likelihood + terms.log_prior
        log_p_sgz = sg.log_likelihood + sg.log_prior  # log p(x, sg(z))
        log_q = log_p - terms.log_weight
        weights = torch.softmax(terms.log_weight.detach(), dim=0)
        if self.gradient == "dreg":
            weights = weights**2
        theta = log_mean_exp(log_p_sgz - log_q.detach())
        phi = (weights * (log_p - sg.log_guide - log_p_sgz)).sum(0)
        surrogate = theta + phi - phi.detach()
        return surrogate + (bound - surrogate).detach()
