"""The ELBO with closed-form KL terms, for reparameterized guides."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyro_vae.errors import InputError
from pyro_vae.infer.loss import ParticleLoss
from pyro_vae.infer.particles import ParticleRun
from pyro_vae.infer.terms import Terms


class MeanFieldELBO(ParticleLoss):
    """The ELBO with analytic KL terms, for guides whose latent sites are all reparameterized.

    For each latent site :math:`z_i` the estimator uses
    :math:`\\mathrm{KL}(q(z_i \\mid \\cdot) \\| p(z_i \\mid \\cdot))` in closed form where PyTorch
    registers it, and :math:`\\log q(z_i) - \\log p(z_i)` at the sampled value otherwise:

    .. math::
        \\widehat{\\mathcal L} = \\sum_{\\text{obs } x} \\log p(x \\mid \\cdot)
        - \\sum_i \\mathrm{KL}(q_i \\| p_i),

    the same estimator as Pyro's :class:`~pyro.infer.TraceMeanField_ELBO` (the same value and
    gradients for the same random draws; tested), with the same requirement: the guide
    is mean-field, or more precisely no latent's parents in the model are descendants of
    it in the guide [1]; where the order of the sites shows it might be (a latent drawn in
    the guide before one that precedes it in the model, as in a bottom-up hierarchical
    guide), that site's term is sampled instead of taken in closed form, which keeps the
    estimate unbiased (Pyro's estimator only warns). Extra training terms (auxiliary model
    sites, ``pyro.factor`` in the guide) count as in Pyro's ``Trace_ELBO``. It records sites
    with the one minimal site recorder of :mod:`pyro_vae.infer`, which is what makes
    pyro_vae's default training step nearly as fast as a hand-written PyTorch step (see
    ``benchmarks/train_step.py``).

    Guides with a non-reparameterizable site (discrete latents) raise an
    :class:`~pyro_vae.errors.InputError` naming the site; use Pyro's ``Trace_ELBO`` or an
    estimator of :mod:`pyro_vae.estimators` for those.

    :param num_particles: samples averaged per step (vectorized where the program allows).

    References:
        [1] Pyro documentation, ``pyro.infer.TraceMeanField_ELBO``.
        [2] Kingma & Welling (2014), "Auto-encoding variational Bayes", ICLR (analytic KL
        for the Gaussian case).
    """

    analytic_kl = True
    linear_objective = True
    gumbel_max = False

    def particles(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> ParticleRun:
        run = super().particles(model, guide, args, kwargs)
        for name, site in run.passes[0][1].items():
            if not site.is_observed and not site.reparameterized:
                raise InputError(
                    f"guide site '{name}' ({type(site.fn).__name__}) is not reparameterizable; "
                    f"{type(self).__name__} needs reparameterized guides: pass loss=pyro.infer.Trace_ELBO() "
                    "or an estimator of pyro_vae.estimators for score-function gradients"
                )
        return run

    def surrogate(self, terms: Terms) -> tuple[torch.Tensor, torch.Tensor]:
        if terms.total is not None:  # the totals fast path (linear_objective)
            return terms.total, terms.total
        objective = terms.batch_objective(terms.training_weight().mean(0))
        return objective, objective
