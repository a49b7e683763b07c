"""``pyro-vae sweep``: one training run per KL weight :math:`\\beta`, and where each lands in
the rate-distortion plane.

The CLI parses arguments into a :class:`~pyro_vae.commands.configs.TrainConfig` and a list of
:math:`\\beta` and calls :func:`sweep_run`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pyro_vae import __version__
from pyro_vae._io import atomic_write_csv, atomic_write_json, make_output_dir
from pyro_vae._lock import RunLock
from pyro_vae.commands.configs import TrainConfig
from pyro_vae.commands.train import prepare, train_run
from pyro_vae.errors import InputError

__all__ = ["COLUMNS", "SweepResult", "format_sweep", "run_name", "sweep_run"]

COLUMNS = ("beta", "rate", "rate_se", "distortion", "distortion_se", "elbo", "elbo_se", "run_dir")
"""The columns of ``sweep.csv``: per run, the test-set means per datapoint in nats and their
standard errors over the test points."""


@dataclass(frozen=True)
class SweepResult:
    """The sweep's directory and one row per :math:`\\beta` (see :data:`COLUMNS`)."""

    out_dir: Path
    rows: tuple[dict[str, Any], ...]

    def format(self) -> str:
        return format_sweep(self.rows)


def run_name(beta: float) -> str:
    """The run directory of one :math:`\\beta` inside the sweep's directory."""
    return f"beta-{beta:g}"


def _check_betas(betas: Sequence[float]) -> None:
    if not betas:
        raise InputError("name at least one beta, e.g. --beta 0.1,0.5,1,2,4")
    for b in betas:
        if not (isinstance(b, int | float) and math.isfinite(b) and b >= 0):
            raise InputError(f"every beta must be a finite number >= 0, got {b!r}")
    names = [run_name(b) for b in betas]
    if len(set(names)) != len(names):
        raise InputError(f"betas are repeated: {', '.join(f'{b:g}' for b in betas)}")


def sweep_run(
    config: TrainConfig, betas: Sequence[float], out_dir: str | Path, *, progress: bool = True
) -> SweepResult:
    """Train ``config`` once per :math:`\\beta` in ``betas`` (each a normal run directory
    ``beta-<β>`` of :func:`~pyro_vae.commands.train.train_run` inside ``out_dir``), then write
    ``sweep.csv``, ``sweep.json`` and ``rate_distortion.png``: each run's test rate
    :math:`R = E_x \\mathrm{KL}(q(z|x) \\| p(z))`, distortion :math:`D = -E_x E_q \\log p(x|z)`
    and ELBO :math:`= -(R + D)`, with the standard errors over the test points, in the
    rate-distortion plane of Alemi et al. [1] with the iso-ELBO diagonals :math:`R + D = c`.

    ``out_dir`` must be new or empty; every option and the data are checked before anything
    is written.

    References:
        [1] Alemi, Poole, Fischer, Dillon, Saurous & Murphy (2018), "Fixing a broken ELBO", ICML.
    """
    out_dir = Path(out_dir)
    _check_betas(betas)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"sweep directory {out_dir} already exists and is not empty; choose another --out")
    configs = [dataclasses.replace(config, beta=float(b)) for b in betas]
    for c in configs:
        c.validate()
    prepare(configs[0])  # the data and the model: every user error before any run
    make_output_dir(out_dir, what="sweep directory")
    rows = []
    with RunLock(out_dir):
        bar = tqdm(configs, disable=not progress, desc="sweep", unit="run", dynamic_ncols=True)
        for c in bar:
            bar.set_postfix(beta=f"{c.beta:g}", refresh=False)
            run = train_run(c, out_dir / run_name(c.beta), progress=False)
            s = run.summary
            rows.append(
                {
                    "beta": c.beta,
                    "rate": s["test_rate"],
                    "rate_se": s["test_rate_se"],
                    "distortion": s["test_distortion"],
                    "distortion_se": s["test_distortion_se"],
                    "elbo": s["test_elbo"],
                    "elbo_se": s["test_elbo_se"],
                    "run_dir": str(run.run_dir),
                }
            )
        _write(out_dir, config, rows)
    return SweepResult(out_dir=out_dir, rows=tuple(rows))


def _write(out_dir: Path, config: TrainConfig, rows: list[dict[str, Any]]) -> None:
    """``sweep.csv``, ``sweep.json`` and ``rate_distortion.png``, each written atomically."""
    from pyro_vae.plotting import plot_rate_distortion  # matplotlib: when used

    atomic_write_csv(out_dir / "sweep.csv", rows)  # the columns of COLUMNS, in order
    config_json = {k: v for k, v in config.to_json().items() if k != "beta"}
    atomic_write_json(
        out_dir / "sweep.json", {"config": config_json, "pyro_vae_version": __version__, "runs": rows}
    )
    plot_rate_distortion(rows, out_dir / "rate_distortion.png")


def format_sweep(rows: Sequence[dict[str, Any]]) -> str:
    """The sweep as a table for the terminal (test means per datapoint, ± one standard error)."""
    head = f"{'beta':>6}  {'rate':>16}  {'distortion':>16}  {'ELBO':>16}"
    lines = [head]
    for r in rows:
        cells = [f"{r[k]:9.3f} ± {r[k + '_se']:.3f}" for k in ("rate", "distortion", "elbo")]
        lines.append(f"{r['beta']:>6g}  " + "  ".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)
