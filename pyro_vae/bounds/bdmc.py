"""Bidirectional Monte Carlo (BDMC): :math:`\\log p(x)` of simulated data sandwiched between
forward and reverse annealed importance sampling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from pyro_vae._checks import check_rows
from pyro_vae._stats import summarize
from pyro_vae.bounds.ais import (
    DEFAULT_HMC,
    DEFAULT_SCHEDULE,
    AISResult,
    AISSettings,
    Schedule,
    ais_chunks,
    collect,
)
from pyro_vae.errors import InputError
from pyro_vae.infer.hmc import HMCOptions
from pyro_vae.infer.per_datapoint import evaluate_particles, probe
from pyro_vae.infer.potential import LatentSpace, simulate


@dataclass(frozen=True)
class BDMCResult:
    """The sandwich per simulated datapoint: ``forward`` (AIS, a stochastic lower bound on
    :math:`\\log p(x)`) and ``reverse`` (reverse AIS, a stochastic upper bound), each an
    :class:`~pyro_vae.bounds.ais.AISResult` whose estimate is the bound (``reverse.log_weights``
    are the reverse chains' :math:`\\log w'`, and ``reverse.value`` is
    :math:`-\\log \\frac1M \\sum_m w'_m`); ``data``: the
    simulated data (the program's positional arguments), ``latents``: their exact posterior
    draws."""

    forward: AISResult
    reverse: AISResult
    data: tuple
    latents: dict[str, torch.Tensor]

    @property
    def lower(self) -> torch.Tensor:
        return self.forward.value

    @property
    def upper(self) -> torch.Tensor:
        return self.reverse.value

    @property
    def gap(self) -> torch.Tensor:
        """``upper - lower`` per datapoint: the width of the sandwich."""
        return self.upper - self.lower

    def summary(self) -> dict[str, float]:
        """Data-set means with the standard errors of the mean over datapoints."""
        return summarize({"lower": self.lower, "upper": self.upper, "gap": self.gap})


def bdmc(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_steps: int,
    num_chains: int = 16,
    schedule: Schedule = DEFAULT_SCHEDULE,
    hmc: HMCOptions = DEFAULT_HMC,
    initial: Literal["guide", "prior"] = "guide",
    adaptation: Literal["pilot", "online"] = "pilot",
    pilot_chains: int = 4,
    max_rows: int = 10_000,
    data_chunk: int | None = None,
    plate_name: str | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> BDMCResult:
    """Bidirectional Monte Carlo [1] on data simulated from the model.

    The model is run forward with its observed sites sampled (``pyro.poutine.uncondition``),
    giving one pair :math:`(x_n, z_n) \\sim p(x, z)` per row of ``args`` (the rows and shapes
    of ``args`` are the template; their values are not used). Then

    - forward AIS (:func:`~pyro_vae.bounds.ais.ais`) from :math:`f_0` to :math:`p(x, z)` gives
      :math:`\\log \\frac1M \\sum_m w_m`, whose expectation is :math:`\\le \\log p(x)`;
    - reverse AIS runs the same chain backwards, :math:`\\beta` from 1 to 0, started at the
      simulated :math:`z_n`, which is an exact draw from :math:`p(z \\mid x_n)` because
      :math:`(x_n, z_n)` was drawn from the joint. Its weights have
      :math:`E[w'] = 1 / p(x)`, so :math:`-\\log \\frac1M \\sum_m w'_m` is :math:`\\ge \\log p(x)`
      in expectation.

    The true :math:`\\log p(x_n)` lies between the two (stochastically), and the width of the
    sandwich bounds the error of either estimate: the evaluator's accuracy is measured, not
    assumed [1, 2]. This is valid **only on simulated data**: on real data no exact posterior
    sample exists to start the reverse chain. The ``num_chains`` reverse chains of a
    datapoint share its one exact draw, so their standard error understates the spread over
    draws of :math:`z_n`.

    Options as in :func:`~pyro_vae.bounds.ais.ais`; with the default pilot adaptation the
    reverse chains follow a pilot's step sizes along the reverse path, so both directions
    use fixed kernels and both expectations hold exactly.

    References:
        [1] Grosse, Ghahramani & Adams (2015), "Sandwiching the marginal likelihood using
            bidirectional Monte Carlo", arXiv:1511.02543.
        [2] Wu, Burda, Salakhutdinov & Grosse (2017), "On the quantitative analysis of
            decoder-based generative models", ICLR.
    """
    settings = AISSettings(
        num_steps=num_steps,
        num_chains=num_chains,
        schedule=schedule,
        hmc=hmc,
        initial=initial,
        adaptation=adaptation,
        pilot_chains=pilot_chains,
        max_rows=max_rows,
        data_chunk=data_chunk,
        plate_name=plate_name,
        progress=progress,
    )
    settings.validate()
    check_rows(args)
    data, latents = simulate(model, args, kwargs)
    plan = probe(model, guide, data, kwargs, plate_name)
    run, _ = evaluate_particles(model, guide, data, kwargs, num_particles=1, plan=plan)
    space = LatentSpace.from_run(run, what="BDMC")
    missing = [n for n in space.names if n not in latents]
    if missing:
        raise InputError(f"the simulated model run has no latent sites {missing} of the guide")
    exact = space.pack({b.name: latents[b.name].reshape(b.shape) for b in space.blocks})
    forward = collect(
        ais_chunks(model, guide, data, kwargs, settings, desc="AIS"),
        num_chains=num_chains,
        num_steps=num_steps,
    )
    reverse = collect(
        ais_chunks(model, guide, data, kwargs, settings, reverse_from=exact, desc="reverse AIS"),
        num_chains=num_chains,
        num_steps=num_steps,
        sign=-1.0,
    )
    return BDMCResult(forward=forward, reverse=reverse, data=data, latents=latents)
