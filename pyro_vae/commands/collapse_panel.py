"""The posterior-collapse panel of ``pyro-vae evaluate``: ELBO surgery, active units and the
KL per dimension of a run, reported together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pyro_vae.diagnostics import elbo_surgery

__all__ = ["collapse_panel", "format_collapse"]


def collapse_panel(
    model: Callable,
    guide: Callable,
    data: tuple[torch.Tensor, ...],
    *,
    layers: dict[str, dict[str, Any]],
    num_particles: int,
    seed: int,
) -> dict[str, Any]:
    """The index-code mutual information :math:`I(n; z)` and the marginal KL
    :math:`\\mathrm{KL}(q(z) \\| p(z))` of :func:`~pyro_vae.diagnostics.elbo_surgery` (their sum
    is the average rate), with the active units and the KL per dimension: a collapsed code
    has :math:`I(n; z) \\approx 0` and few active units; a code that is used but does not match
    the prior has a large marginal KL [1, 2]. ``layers`` are the per-layer diagnostics of
    ``evaluate`` (active units and KL per dimension of each latent site), concatenated here;
    the KL per dimension is ``None`` where a layer has no closed form."""
    surgery = elbo_surgery(model, guide, *data, num_particles=num_particles, seed=seed)
    per_dim = [layer["kl_per_dimension"] for layer in layers.values()]
    return {
        **surgery.summary(),
        "active_units": sum(layer["active_units"] for layer in layers.values()),
        "active": [a for layer in layers.values() for a in layer["active"]],
        "latent_dim": sum(layer["latent_dim"] for layer in layers.values()),
        "kl_per_dimension": None if None in per_dim else [v for dims in per_dim for v in dims],
    }


def format_collapse(panel: dict[str, Any]) -> list[str]:
    """The panel's lines for the terminal table of ``pyro-vae evaluate``."""
    row = "{:<28} {:>10.3f} {:>8.3f}"
    per_dim = panel["kl_per_dimension"]
    kl = "no closed form" if per_dim is None else ", ".join(f"{v:.2f}" for v in per_dim)
    return [
        "posterior collapse (ELBO surgery):",
        row.format("  average KL (rate)", panel["average_kl"], panel["average_kl_se"]),
        row.format("  I(n; z)", panel["mutual_information"], panel["mutual_information_se"]),
        row.format("  KL(q(z) || p(z))", panel["marginal_kl"], panel["marginal_kl_se"]),
        f"  (I(n; z) <= log N = {panel['log_num_data']:.3f}; {panel['num_particles']} draws per point)",
        f"  active units: {panel['active_units']} of {panel['latent_dim']}; KL per dimension: {kl}",
    ]
