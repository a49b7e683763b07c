"""Approximation and amortization gaps (Cremer et al. 2018) for Gaussian guides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import trange

from pyro_vae._checks import check_positive_int
from pyro_vae._stats import summarize
from pyro_vae.bounds.elbo import elbo as elbo_bound
from pyro_vae.bounds.estimate import BoundEstimate, difference
from pyro_vae.bounds.iwae import log_marginal
from pyro_vae.infer.local_guide import LocalGaussian, amortized_site, local_elbo
from pyro_vae.infer.modes import evaluation_mode
from pyro_vae.infer.particles import plan_program, probing
from pyro_vae.infer.per_datapoint import num_rows


@dataclass(frozen=True)
class AmortizationGap:
    """Per datapoint (values of shape ``(B,)``, each with its standard error):
    ``log_marginal`` :math:`\\log \\hat p(x)` (importance-sampled from :math:`q^*`),
    ``optimal`` :math:`\\mathcal L[q^*]` (the best non-amortized Gaussian) and ``amortized``
    :math:`\\mathcal L[q]` (the encoder's guide), and the two gaps:

    - approximation gap :math:`= \\log p(x) - \\mathcal L[q^*]` (the variational family);
    - amortization gap :math:`= \\mathcal L[q^*] - \\mathcal L[q]` (the encoder).
    """

    log_marginal: BoundEstimate
    optimal: BoundEstimate
    amortized: BoundEstimate

    @property
    def approximation_gap(self) -> BoundEstimate:
        return difference(self.log_marginal, self.optimal)

    @property
    def amortization_gap(self) -> BoundEstimate:
        return difference(self.optimal, self.amortized)

    def summary(self) -> dict[str, float]:
        """Data-set means; ``*_se`` are standard errors of the mean over datapoints."""
        parts = {
            "log_marginal": self.log_marginal,
            "elbo_optimal": self.optimal,
            "elbo_amortized": self.amortized,
        }
        parts |= {"approximation_gap": self.approximation_gap, "amortization_gap": self.amortization_gap}
        return summarize({name: estimate.value for name, estimate in parts.items()})


def amortization_gap(
    model: Callable,
    guide: Callable,
    *args: Any,
    site: str = "z",
    steps: int = 500,
    lr: float = 0.05,
    train_particles: int = 8,
    eval_particles: int = 1000,
    num_particles: int = 5000,
    plate_name: str | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> AmortizationGap:
    """Split the ELBO gap of the datapoints in ``args`` into approximation and amortization
    gaps [1]: fit a separate Gaussian :math:`q^*_n` of the guide's family to every datapoint
    (initialized from the encoder's output, model parameters fixed) by maximizing its ELBO
    with Adam for ``steps`` steps, then evaluate :math:`\\mathcal L[q^*]`, :math:`\\mathcal L[q]`
    (``eval_particles`` samples) and :math:`\\log \\hat p(x)` (``num_particles`` importance
    samples from :math:`q^*`).

    The guide's only latent ``site`` must be a (diagonal) Normal or a MultivariateNormal
    inside the data plate; the model may be any program. No parameter of the model or the
    amortized guide is changed, and modules run in eval mode.

    References:
        [1] Cremer, Li & Duvenaud (2018), "Inference suboptimality in variational
        autoencoders", ICML.
    """
    check_positive_int(steps, "steps", minimum=0)
    with probing(args):
        fn_site, frame = amortized_site(
            guide, args, kwargs, site, plate_name=plate_name, purpose="the amortization gap"
        )
    local = LocalGaussian.from_site(fn_site, frame, detach=True)
    plate = local.plate_name
    opt = torch.optim.Adam(local.params, lr=lr)
    with evaluation_mode():
        plan = plan_program(model, local, args, kwargs, plate_name=plate)
        for _ in trange(steps, disable=not progress, desc="local ELBO", unit="step"):
            objective = local_elbo(model, local, args, kwargs, num_particles=train_particles, plan=plan).sum()
            grads = torch.autograd.grad(-objective, local.params)
            for p, g in zip(local.params, grads, strict=True):
                p.grad = g
            opt.step()
    local = local.detached()
    n = num_rows(args)  # q* holds parameters for exactly these rows: never split them
    lm = log_marginal(
        model, local, *args, num_particles=num_particles, plate_name=plate, data_chunk=n, **kwargs
    )
    opt_elbo = elbo_bound(
        model,
        local,
        *args,
        num_particles=eval_particles,
        plate_name=plate,
        data_chunk=n,
        return_error=True,
        **kwargs,
    )
    amo_elbo = elbo_bound(
        model, guide, *args, num_particles=eval_particles, plate_name=plate, return_error=True, **kwargs
    )
    return AmortizationGap(log_marginal=lm, optimal=opt_elbo, amortized=amo_elbo)
