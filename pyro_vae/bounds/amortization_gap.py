"""Approximation and amortization gaps (Cremer et al. 2018) for Gaussian guides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import Independent, MultivariateNormal, Normal
from tqdm.auto import trange

from pyro_vae._checks import check_positive_int
from pyro_vae._stats import summarize
from pyro_vae.bounds.elbo import elbo as elbo_bound
from pyro_vae.bounds.estimate import BoundEstimate, difference
from pyro_vae.bounds.iwae import log_marginal
from pyro_vae.errors import InputError
from pyro_vae.infer.mean_field_elbo import MeanFieldELBO
from pyro_vae.infer.modes import evaluation_mode
from pyro_vae.infer.particles import forked_rng
from pyro_vae.infer.per_datapoint import evaluate_particles, num_rows, probe


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


class _LocalGaussian(torch.nn.Module):
    """Free per-datapoint Gaussian parameters, initialized from the amortized guide's output,
    as a guide with the program's data plate (same name and dim)."""

    def __init__(self, fn: Any, site: str, plate_name: str, plate_dim: int) -> None:
        super().__init__()
        self.site, self.plate_name, self.plate_dim = site, plate_name, plate_dim
        base, event = fn, 0
        while isinstance(base, Independent):
            event += base.reinterpreted_batch_ndims
            base = base.base_dist
        self.event = event
        if isinstance(base, MultivariateNormal):
            self.kind = "mvn"
            tril = base.scale_tril.detach().expand(base.batch_shape + base.event_shape + base.event_shape)
            self.loc = torch.nn.Parameter(base.loc.detach().clone())
            self.tril_off = torch.nn.Parameter(tril.tril(-1).clone())
            self.log_diag = torch.nn.Parameter(tril.diagonal(dim1=-2, dim2=-1).log().clone())
        elif isinstance(base, Normal):
            self.kind = "normal"
            self.loc = torch.nn.Parameter(base.loc.detach().clone())
            self.log_scale = torch.nn.Parameter(base.scale.detach().expand_as(base.loc).log().clone())
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
        size = q.batch_shape[self.plate_dim]
        with pyro.plate(self.plate_name, size, dim=self.plate_dim):
            return pyro.sample(self.site, q)


def _guide_site(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, site: str, plate_name: str | None
) -> tuple[Any, str, int]:
    """The guide's distribution at ``site`` and the data plate's name and dim (one evaluation
    run: modules in eval mode, random number generators forked)."""
    plan = probe(model, guide, args, kwargs, plate_name)
    with forked_rng(args):
        run, _ = evaluate_particles(model, guide, args, kwargs, num_particles=1, plan=plan)
    guide_sites = run.passes[0][1]
    if site not in guide_sites or guide_sites[site].is_observed:
        raise InputError(f"the guide has no latent sample site '{site}'")
    others = [n for n, s in guide_sites.items() if n != site and not s.is_observed]
    if others:
        raise InputError(
            f"the amortization gap refits one Gaussian site per datapoint, and the guide has other "
            f"latent sites {others}; it needs a guide whose only latent is '{site}'"
        )
    layout = run.layout
    assert layout.data_plate is not None and layout.data_dim is not None
    return guide_sites[site].fn, layout.data_plate, layout.data_dim


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
    fn, plate, dim = _guide_site(model, guide, args, kwargs, site, plate_name)
    local = _LocalGaussian(fn, site, plate, dim)
    params = list(local.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    loss = MeanFieldELBO(num_particles=train_particles, plate_name=plate)
    with evaluation_mode():
        for _ in trange(steps, disable=not progress, desc="local ELBO", unit="step"):
            grads = torch.autograd.grad(loss.differentiable_loss(model, local, *args, **kwargs), params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()
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
