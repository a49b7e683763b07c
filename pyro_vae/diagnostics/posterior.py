"""Posterior samples of a latent site as ArviZ InferenceData."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pyro_vae._checks import check_positive_int
from pyro_vae.diagnostics._arviz import arviz
from pyro_vae.infer.per_datapoint import evaluate_particles, probe


@torch.no_grad()
def posterior_inference_data(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    site: str = "z",
    resample: bool = False,
    plate_name: str | None = None,
    **kwargs: Any,
) -> Any:
    """Samples of ``site`` for each datapoint, as ``arviz.InferenceData`` with variable ``site``
    of dims ``(chain=1, draw, datapoint, ...)``.

    With ``resample=False`` the draws are from :math:`q(z \\mid x)`. With ``resample=True`` they
    are resampled in proportion to :math:`w = p(x, z)/q(z \\mid x)` (sampling-importance-
    resampling), which approximates the exact posterior :math:`p(z \\mid x)` as
    ``num_samples`` grows [1]; ``sample_stats`` then holds the log-weights. Works for any
    program (particles vectorized where it broadcasts, one at a time where it does not);
    modules run in eval mode.

    References:
        [1] Rubin (1988), "Using the SIR algorithm to simulate posterior distributions",
        Bayesian Statistics 3.
    """
    check_positive_int(num_samples, "num_samples")
    plan = probe(model, guide, args, kwargs, plate_name)
    run, terms = evaluate_particles(model, guide, args, kwargs, num_particles=num_samples, plan=plan)
    z = run.guide_values(site)  # (S, N, ...)
    sample_stats = {}
    if resample:
        log_w = terms.log_weight
        idx = torch.multinomial(torch.softmax(log_w, 0).T, num_samples, replacement=True).T  # (S, N)
        z = torch.gather(z, 0, idx.reshape(idx.shape + (1,) * (z.dim() - 2)).expand_as(z))
        sample_stats["log_weight"] = log_w.cpu().numpy()[None]
    az = arviz()
    return az.from_dict(
        posterior={site: z.cpu().numpy()[None]},
        sample_stats=sample_stats or None,
        dims={site: ["datapoint", f"{site}_dim"][: z.dim() - 1]},
    )
