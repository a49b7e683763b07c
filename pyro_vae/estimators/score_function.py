"""The score-function (REINFORCE) estimator with optional baselines."""

from __future__ import annotations

from typing import Unpack

import torch

from pyro_vae.errors import InputError
from pyro_vae.estimators.baselines import Baseline
from pyro_vae.infer.loss import ParticleLoss, ParticleOptions
from pyro_vae.infer.terms import Terms


class ScoreFunctionELBO(ParticleLoss):
    """The ELBO with score-function gradients for discrete guide sites [1], and a baseline [2, 3].

    For each datapoint :math:`n` and particle :math:`z_k \\sim q_\\phi(z \\mid x_n)` with
    learning signal :math:`\\ell_k = \\log p_\\theta(x_n, z_k) - \\log q_\\phi(z_k \\mid x_n)`,
    the gradient is

    .. math::
        \\frac1K \\sum_k \\Big[\\nabla \\ell_k \\big|_{z_k^{\\mathrm{disc}}} + (\\ell_k - b_n)\\,
        \\nabla_\\phi \\log q_\\phi(z_k^{\\mathrm{disc}} \\mid x_n)\\Big],

    where :math:`\\nabla \\ell_k |_{z^{\\mathrm{disc}}}` holds the model gradient and the
    pathwise gradient of any reparameterized guide sites, without the zero-mean
    :math:`-\\nabla_\\phi \\log q_\\phi(z^{\\mathrm{disc}})`; the score term covers the sites
    without ``rsample``.
    Each datapoint's score is multiplied by its own signal only (Rao-Blackwellization over
    the data plate, as in Pyro's ``Trace_ELBO``); without a baseline the gradient equals
    ``Trace_ELBO``'s for the same draws (tested). The estimator is unbiased for
    :math:`\\nabla \\mathcal L` whenever :math:`b_n` does not depend on :math:`z_k`.
    Minibatches are scaled by :math:`N/B`.

    Extra training terms (auxiliary model sites, ``pyro.factor`` in the guide) are added to the
    objective outside the learning signal: they must not depend on the discrete latents.

    :param baseline: a :class:`~pyro_vae.estimators.Baseline` (its state lives in the
        baseline object), or ``None``.
    :param num_particles: :math:`K`, independent samples per datapoint.

    References:
        [1] Williams (1992), "Simple statistical gradient-following algorithms for
        connectionist reinforcement learning", Machine Learning 8.
        [2] Paisley, Blei & Jordan (2012), "Variational Bayesian inference with stochastic
        search", ICML.
        [3] Mnih & Gregor (2014), "Neural variational inference and learning in belief
        networks", ICML.
    """

    def __init__(
        self,
        *,
        baseline: Baseline | None = None,
        **options: Unpack[ParticleOptions],
    ) -> None:
        super().__init__(**options)
        if baseline is not None and not isinstance(baseline, Baseline):
            raise InputError(f"baseline must be a pyro_vae Baseline, got {type(baseline).__name__}")
        self.baseline = baseline
        self.gumbel_max = self.num_particles > 1  # one particle draws as Pyro's Trace_ELBO does

    def state_dict(self) -> dict:
        """The baseline's state (running averages; a network's weights), for checkpoints."""
        return {"baseline": self.baseline.state_dict()} if self.baseline is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.baseline is not None and "baseline" in state:
            self.baseline.load_state_dict(state["baseline"])

    def reset(self) -> None:
        if self.baseline is not None:
            self.baseline.reset()

    def surrogate(self, terms: Terms) -> tuple[torch.Tensor, torch.Tensor]:
        objective = terms.batch_objective(terms.training_weight().mean(0))
        surrogate = objective
        score_part = terms.log_guide_score
        if score_part is not None and torch.is_grad_enabled():
            # drop the zero-mean term -grad log q(z) at fixed discrete z, as Pyro does
            surrogate = surrogate + terms.data_scale * (score_part - score_part.detach()).mean(0).sum()
            signal = terms.log_weight.detach()
            baseline_loss: torch.Tensor | float = 0.0
            if self.baseline is not None:
                b, baseline_loss = self.baseline(signal, terms.args[0])
                signal = signal - b
            score = terms.data_scale * (signal * score_part).mean(0).sum() - baseline_loss
            surrogate = surrogate + (score - score.detach())
        return objective, surrogate
