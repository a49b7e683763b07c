"""``pyro-vae evaluate``: bounds, gaps and diagnostics of a training run on its test data.

The CLI parses arguments into an :class:`~pyro_vae.commands.configs.EvaluateConfig` and
calls :func:`evaluate_run`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae._io import atomic_write_csv, atomic_write_json
from pyro_vae._lock import RunLock
from pyro_vae._stats import mean_and_se
from pyro_vae.bounds import ais, amortization_gap, elbo, iwae
from pyro_vae.commands.collapse_panel import collapse_panel, format_collapse
from pyro_vae.commands.configs import EvaluateConfig, check_device
from pyro_vae.commands.refinement import format_refined, refined_evaluation
from pyro_vae.commands.train import CHECKPOINT, prepare, read_config
from pyro_vae.diagnostics import active_units_per_site, importance_diagnostics, kl_per_site
from pyro_vae.errors import InputError
from pyro_vae.infer.captured_log_weights import CapturedLogWeights
from pyro_vae.train import load_parameters

__all__ = [
    "EvaluateConfig",
    "evaluate_run",
    "format_evaluation",
]


def evaluate_run(
    run_dir: str | Path, config: EvaluateConfig, *, progress: bool = True, device: str = "cpu"
) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` on (up to ``num_points`` of) its test split and write
    ``evaluation.json``, ``bounds.csv`` and the figures ``bounds_vs_k.png``, ``k_hat.png``,
    ``kl_per_dim.png``, ``collapse.png`` there, on ``device`` (``"cpu"``, ``"cuda"`` or
    ``"auto"``). Returns the results.

    :raises InputError: if ``run_dir`` holds no run of :func:`~pyro_vae.commands.train.train_run`.
    """
    run_dir = Path(run_dir)
    train_config = read_config(run_dir)
    config.validate()
    where = check_device(device)
    splits, vae = prepare(train_config)
    test = splits.test.subset(torch.arange(min(config.num_points, len(splits.test)))).to(where)
    vae.to(where)
    data = test.tensors(with_labels=train_config.conditional)
    load_parameters(vae.model, vae.guide, run_dir / CHECKPOINT, *(t[:2] for t in data))
    model, guide = vae.model, vae.guide
    results: dict[str, Any] = {"run_dir": str(run_dir), "num_points": len(test), "config": asdict(config)}
    with torch.random.fork_rng():
        pyro.set_rng_seed(config.seed)
        el = elbo(model, guide, *data, num_particles=config.elbo_particles)
        results["elbo"], results["elbo_se"] = mean_and_se(el)
        rows = []
        bounds: dict[int, torch.Tensor] = {}
        # kept across the Ks: a chunk shape that recurs is captured once (compiled in a long bound)
        capture = CapturedLogWeights(matmul=config.matmul, compile=config.compile)
        for k in tqdm(config.ks, disable=not progress, desc="L_K", unit="K"):
            est = iwae(
                model,
                guide,
                *data,
                num_particles=k,
                max_rows=config.max_rows,
                return_error=True,
                capture=capture,
            )
            bounds[k] = est.value
            mean, se = mean_and_se(est.value)
            rows.append({"K": k, "bound": mean, "se": se, "mc_se_median": est.standard_error.median().item()})
        k_max = max(config.ks)
        results["bounds"] = rows
        results["log_marginal"], results["log_marginal_se"] = mean_and_se(bounds[k_max])
        results["log_marginal_K"] = k_max
        results["elbo_gap"], results["elbo_gap_se"] = mean_and_se(bounds[k_max] - el)
        if config.ais_steps:
            results["ais"] = _ais_summary(model, guide, data, config, progress)
        exact = getattr(vae, "log_marginal", None)  # models with a closed form (linear-Gaussian)
        if callable(exact):
            results["exact_log_marginal"] = exact(*data).mean().item()
        diag = importance_diagnostics(model, guide, *data, num_particles=config.k_hat_particles)
        results["k_hat"] = diag.summary()
        if config.gap_points:
            subset = tuple(t[: config.gap_points] for t in data)
            try:
                gap = amortization_gap(
                    model, guide, *subset, steps=config.gap_steps, num_particles=k_max, progress=progress
                )
            except InputError as e:  # one Gaussian latent site only (not a flow, not several layers)
                results["amortization_unavailable"] = str(e)
            else:
                results["amortization"] = gap.summary()
        refined = refined_evaluation(
            train_config,
            model,
            guide,
            data,
            elbo_particles=config.elbo_particles,
            num_particles=k_max,
            max_rows=config.max_rows,
        )
        if refined is not None:
            results["refined"] = refined
    layers = layer_diagnostics(model, guide, data)
    results["layers"] = layers
    results["active_units"] = sum(layer["active_units"] for layer in layers.values())
    results["latent_dim"] = sum(layer["latent_dim"] for layer in layers.values())
    per_dim = [layer["kl_per_dimension"] for layer in layers.values()]
    kl = torch.tensor([v for dims in per_dim for v in dims]) if None not in per_dim else None
    results["kl_per_dimension"] = None if kl is None else kl.tolist()
    results["collapse"] = collapse_panel(
        model, guide, data, layers=layers, num_particles=config.surgery_particles, seed=config.seed
    )
    with RunLock(run_dir):  # not while another process writes into the run directory
        _write_results(run_dir, results, rows, diag.k_hat, kl)
    return results


def layer_diagnostics(
    model: Any, guide: Any, data: tuple[torch.Tensor, ...], *, num_samples: int = 20
) -> dict[str, dict[str, Any]]:
    """KL per dimension and active units of each latent site (stochastic layer) of the guide.

    Active units average each site's conditional mean over ``num_samples`` guide runs (exact
    for a layer that depends on no draw; see
    :func:`~pyro_vae.diagnostics.active_units_per_site`). The KL per dimension is in closed
    form where prior and posterior factorize (diagonal Gaussians); a mixture prior or a flow
    posterior has none, and the layer's entry says so (its KL is in the rate of the bounds).
    """
    units = active_units_per_site(guide, *data, num_samples=num_samples)
    layers: dict[str, dict[str, Any]] = {}
    for name, au in units.items():
        layer: dict[str, Any] = {
            "latent_dim": int(au.variance.shape[0]),
            "active_units": au.count,
            "active": au.active.tolist(),
        }
        try:
            kl = kl_per_site(model, guide, *data, sites=(name,))[name]
        except InputError as e:
            layer.update(kl=None, kl_per_dimension=None, kl_unavailable=str(e))
        else:
            layer.update(kl=kl.sum().item(), kl_per_dimension=kl.tolist())
        layers[name] = layer
    return layers


def _ais_summary(
    model: Any, guide: Any, data: tuple, config: EvaluateConfig, progress: bool
) -> dict[str, Any]:
    """The AIS row: :func:`~pyro_vae.bounds.ais` with ``config.ais_steps`` steps and
    ``config.ais_chains`` chains per datapoint, as data-set means."""
    r = ais(
        model,
        guide,
        *data,
        num_steps=config.ais_steps,
        num_chains=config.ais_chains,
        max_rows=config.max_rows,
        progress=progress,
    )
    mean, se = mean_and_se(r.value)
    return {
        "steps": config.ais_steps,
        "chains": config.ais_chains,
        "bound": mean,
        "se": se,
        "mc_se_median": r.standard_error.median().item(),
        "acceptance_rate": r.acceptance_rate.mean().item(),
        "step_size": r.step_size.mean().item(),
        "log_weight_variance_median": r.log_weight_variance.median().item(),
    }


def _write_results(
    run_dir: Path,
    results: dict[str, Any],
    rows: list[dict[str, Any]],
    k_hat: torch.Tensor,
    kl: torch.Tensor | None,
) -> None:
    """``evaluation.json``, ``bounds.csv`` and the figures, each written atomically."""
    from pyro_vae.plotting import plot_bound_vs_k, plot_k_hat, plot_kl_per_dimension  # matplotlib: when used

    atomic_write_json(run_dir / "evaluation.json", results)
    ais_rows = []
    if "ais" in results:  # the AIS row: K holds "AIS"
        ais_rows.append({"K": "AIS"} | {k: results["ais"][k] for k in ("bound", "se", "mc_se_median")})
    atomic_write_csv(run_dir / "bounds.csv", rows + ais_rows)
    plot_bound_vs_k(
        [r["K"] for r in rows],
        [r["bound"] for r in rows],
        [r["se"] for r in rows],
        run_dir / "bounds_vs_k.png",
        elbo=results["elbo"],
        log_marginal=results["log_marginal"],
        ais=results["ais"]["bound"] if "ais" in results else None,
        exact=results.get("exact_log_marginal"),
    )
    plot_k_hat(k_hat, run_dir / "k_hat.png")
    if kl is not None:  # no closed-form KL (mixture prior, flow posterior): no figure
        plot_kl_per_dimension(kl, run_dir / "kl_per_dim.png")
    from pyro_vae.plotting import plot_collapse

    plot_collapse(results["collapse"], run_dir / "collapse.png")


def format_evaluation(results: dict[str, Any]) -> str:
    """The evaluation as a table for the terminal."""
    lines = [f"test points: {results['num_points']}", f"{'quantity':<28} {'nats':>10} {'± se':>8}"]
    row = "{:<28} {:>10.3f} {:>8.3f}"
    lines.append(row.format("ELBO", results["elbo"], results["elbo_se"]))
    for r in results["bounds"]:
        lines.append(row.format(f"L_{r['K']}", r["bound"], r["se"]))
    lines.append(
        row.format(
            f"log p(x) (L_{results['log_marginal_K']})", results["log_marginal"], results["log_marginal_se"]
        )
    )
    if "ais" in results:
        a = results["ais"]
        lines.append(row.format(f"AIS ({a['steps']} steps x {a['chains']})", a["bound"], a["se"]))
    if "exact_log_marginal" in results:
        lines.append(row.format("log p(x) exact", results["exact_log_marginal"], 0.0))
    lines.append(row.format("ELBO gap", results["elbo_gap"], results["elbo_gap_se"]))
    lines += format_refined(results)
    if "amortization" in results:
        a = results["amortization"]
        lines.append(
            row.format(
                f"approximation gap ({a['num_data']} pts)", a["approximation_gap"], a["approximation_gap_se"]
            )
        )
        lines.append(
            row.format(
                f"amortization gap ({a['num_data']} pts)", a["amortization_gap"], a["amortization_gap_se"]
            )
        )
    if "amortization_unavailable" in results:
        lines.append(f"amortization gap: not computed ({results['amortization_unavailable']})")
    k = results["k_hat"]
    lines.append(
        f"PSIS k-hat: median {k['k_hat_median']:.2f}, max {k['k_hat_max']:.2f}, "
        f"{k['fraction_k_hat_above_0.7']:.0%} above 0.7 ({k['num_particles']} samples)"
    )
    lines.append(f"active units: {results['active_units']} of {results['latent_dim']}")
    layers = results.get("layers", {})
    if len(layers) > 1 or any(layer["kl"] is None for layer in layers.values()):
        for name, layer in layers.items():
            kl = "no closed-form KL" if layer["kl"] is None else f"KL {layer['kl']:.3f} nats"
            lines.append(f"  {name}: {layer['active_units']} of {layer['latent_dim']} active, {kl}")
    if "collapse" in results:
        lines.extend(format_collapse(results["collapse"]))
    return "\n".join(lines)
