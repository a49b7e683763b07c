"""Semi-amortized inference in the ``pyro-vae`` commands: the guide ``train`` fits with
``--refine-steps`` and the bounds of the refined guide that ``evaluate`` reports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pyro_vae._stats import mean_and_se
from pyro_vae.bounds import elbo, iwae
from pyro_vae.commands.configs import TrainConfig
from pyro_vae.infer.refined_guide import refined_guide


def training_guide(config: TrainConfig, model: Any) -> Callable:
    """The guide a run trains: the VAE's amortized guide, or with ``refine_steps`` its
    semi-amortized refinement, differentiated through (SA-VAE, Kim et al. 2018)."""
    if config.refine_steps == 0:
        return model.guide
    return refined_guide(model.model, model.guide, steps=config.refine_steps, lr=config.refine_lr)


def refined_evaluation(
    config: TrainConfig,
    model: Callable,
    guide: Callable,
    data: tuple[torch.Tensor, ...],
    *,
    elbo_particles: int,
    num_particles: int,
    max_rows: int | None,
) -> dict[str, Any] | None:
    """The ELBO and :math:`\\mathcal L_K` of the refined guide (``None`` for an amortized run),
    beside which ``evaluate`` puts the amortized ones."""
    if config.refine_steps == 0:
        return None
    refined = refined_guide(model, guide, steps=config.refine_steps, lr=config.refine_lr)
    out: dict[str, Any] = {"steps": config.refine_steps, "lr": config.refine_lr, "K": num_particles}
    out["elbo"], out["elbo_se"] = mean_and_se(elbo(model, refined, *data, num_particles=elbo_particles))
    bound = iwae(model, refined, *data, num_particles=num_particles, max_rows=max_rows)
    out["log_marginal"], out["log_marginal_se"] = mean_and_se(bound)
    return out


def format_refined(results: dict[str, Any]) -> list[str]:
    """The refined guide's rows of the ``evaluate`` table."""
    r = results.get("refined")
    if r is None:
        return []
    row = "{:<28} {:>10.3f} {:>8.3f}"
    return [
        row.format(f"ELBO refined (S={r['steps']})", r["elbo"], r["elbo_se"]),
        row.format(f"L_{r['K']} refined (S={r['steps']})", r["log_marginal"], r["log_marginal_se"]),
    ]
