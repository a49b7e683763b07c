"""Approximation and amortization gaps (Cremer et al. 2018) for Gaussian guides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import Independent, MultivariateNormal, Normal
from tqdm.auto import trange

from pyro_vae._stats import summarize
from pyro_vae.bounds.elbo import elbo as elbo_bound
from pyro_vae.bounds.iwae import log_marginal
from pyro_vae.errors import InputError
from pyro_vae.infer.mean_field_elbo import MeanFieldELBO


@dataclass(frozen=True)
class AmortizationGap:
    """Per datapoint (shape ``(B,)``): :math:`\\log \\hat p(x)`, :math:`\\mathcal L[q^*]` (the
    best non-amortized Gaussian) and :math:`\\mathcal L[q]` (the amortized guide), with
    standard errors, and the two gaps:

    - approximation gap :math:`= \\log p(x) - \\mathcal L[q^*]` (the variational family);
    - amortization gap :math:`= \\mathcal L[q^*] - \\mathcal L[q]` (the encoder).
    """

    log_marginal: torch.Tensor
    log_marginal_se: torch.Tensor
    elbo_optimal: torch.Tensor
    elbo_optimal_se: torch.Tensor
    elbo_amortized: torch.Tensor
    elbo_amortized_se: torch.Tensor

    @property
    def approximation_gap(self) -> torch.Tensor:
        return self.log_marginal - self.elbo_optimal

    @property
    def amortization_gap(self) -> torch.Tensor:
        return self.elbo_optimal - self.elbo_amortized

    def summary(self) -> dict[str, float]:
        names = ("log_marginal", "elbo_optimal", "elbo_amortized", "approximation_gap", "amortization_gap")
        return summarize({name: getattr(self, name) for name in names})


class _LocalGaussian(torch.nn.Module):
    """Free per-datapoint Gaussian parameters, initialized from the amortized guide's output."""

    def __init__(self, fn: Any, site: str, plate_name: str) -> None:
        super().__init__()
        self.site, self.plate_name = site, plate_name
        base, event = fn, 0
        while isinstance(base, Independent):
            event += base.reinterpreted_batch_ndims
            base = base.base_dist
        self.event = event
        if isinstance(base, MultivariateNormal):
            self.kind = "mvn"
            tril = base.scale_tril.detach()
            self.loc = torch.nn.Parameter(base.loc.detach().clone())
            self.tril_off = torch.nn.Parameter(tril.tril(-1).clone())
            self.log_diag = torch.nn.Parameter(tril.diagonal(dim1=-2, dim2=-1).log().clone())
        elif isinstance(base, Normal):
            self.kind = "normal"
            self.loc = torch.nn.Parameter(base.loc.detach().clone())
            self.log_scale = torch.nn.Parameter(base.scale.detach().log().clone())
        else:
            raise InputError(
                f"the amortization gap needs a Normal or MultivariateNormal guide at '{site}', "
                f"got {type(base).__name__}"
            )

    def distribution(self) -> Any:
        if self.kind == "mvn":
            tril = self.tril_off.tril(-1) + torch.diag_embed(self.log_diag.exp())
            return dist.MultivariateNormal(self.loc, scale_tril=tril)
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(self.event)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        q = self.distribution()
        with pyro.plate(self.plate_name, q.batch_shape[-1], dim=-1):
            return pyro.sample(self.site, q)


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
    plate_name: str = "data",
    progress: bool = False,
    **kwargs: Any,
) -> AmortizationGap:
    """Split the ELBO gap of the datapoints in ``args`` into approximation and amortization
    gaps [1]: fit a separate Gaussian :math:`q^*_n` of the guide's family to every datapoint
    (initialized from the encoder's output, model parameters fixed) by maximizing its ELBO
    with Adam for ``steps`` steps, then evaluate :math:`\\mathcal L[q^*]`, :math:`\\mathcal L[q]`
    (``eval_particles`` samples) and :math:`\\log \\hat p(x)` (``num_particles`` importance
    samples from :math:`q^*`).

    The guide's latent ``site`` must be a (diagonal) Normal or a MultivariateNormal inside the
    data plate at ``dim=-1``; the model may be any program. No parameter of the model or the
    amortized guide is changed.

    References:
        [1] Cremer, Li & Duvenaud (2018), "Inference suboptimality in variational
        autoencoders", ICML.
    """
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    if site not in trace.nodes:
        raise InputError(f"the guide has no sample site '{site}'")
    local = _LocalGaussian(trace.nodes[site]["fn"], site, plate_name)
    params = list(local.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    loss = MeanFieldELBO(num_particles=train_particles)
    for _ in trange(steps, disable=not progress, desc="local ELBO", unit="step"):
        grads = torch.autograd.grad(loss.differentiable_loss(model, local, *args, **kwargs), params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
    with torch.no_grad():
        n = args[0].shape[0]  # q* holds parameters for exactly these rows: never split them
        lm = log_marginal(
            model, local, *args, num_particles=num_particles, plate_name=plate_name, data_chunk=n, **kwargs
        )
        opt_elbo = elbo_bound(
            model,
            local,
            *args,
            num_particles=eval_particles,
            plate_name=plate_name,
            return_error=True,
            **kwargs,
        )
        amo_elbo = elbo_bound(
            model,
            guide,
            *args,
            num_particles=eval_particles,
            plate_name=plate_name,
            return_error=True,
            **kwargs,
        )
    return AmortizationGap(
        log_marginal=lm.value,
        log_marginal_se=lm.standard_error,
        elbo_optimal=opt_elbo.value,
        elbo_optimal_se=opt_elbo.standard_error,
        elbo_amortized=amo_elbo.value,
        elbo_amortized_se=amo_elbo.standard_error,
    )
