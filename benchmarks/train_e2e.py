"""Where the time of the default ``pyro-vae train`` goes: start-up, training, per-epoch metrics
and checkpoints, test evaluation, figures.

Runs the CLI's back-end in this process (``pyro_vae.commands.train.train_run`` with the default
configuration, ``--epochs`` aside) with a timer around each part, then the whole command in a
fresh process for its wall time (start-up included). The per-epoch overheads (metrics,
checkpoint) are given as fractions of the epoch.

    python benchmarks/train_e2e.py [--epochs 100] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

tic_start = time.perf_counter()
import torch  # noqa: E402 - the import is part of what is timed
from _common import emit, environment, set_threads  # noqa: E402

import pyro_vae.commands.train as train_cmd  # noqa: E402
from pyro_vae.commands.configs import TrainConfig  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - tic_start
fit_mod = sys.modules["pyro_vae.train.fit"]  # the module (pyro_vae.train.fit is the function)


def _timed(store: dict, key: str, fn):
    def wrapper(*args, **kwargs):
        tic = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store[key].append(time.perf_counter() - tic)

    return wrapper


def in_process(epochs: int) -> dict:
    """Timers around the parts of one default run (the functions are wrapped here, in the
    benchmark only)."""
    times: dict[str, list[float]] = defaultdict(list)
    patches = [
        (train_cmd, "prepare"),
        (train_cmd, "fit"),
        (train_cmd, "rate_distortion"),
        (train_cmd, "write_figures"),
        (fit_mod, "epoch_metrics"),
        (fit_mod, "save_checkpoint"),
        (fit_mod, "_run_epoch"),
    ]
    saved = [(mod, name, getattr(mod, name)) for mod, name in patches]
    for mod, name, fn in saved:
        setattr(mod, name, _timed(times, name, fn))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tic = time.perf_counter()
            run = train_cmd.train_run(TrainConfig(epochs=epochs), Path(tmp) / "run", progress=False)
            total = time.perf_counter() - tic
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    epoch_seconds = [r["seconds"] for r in run.fit.history]  # fit's own: steps + metrics
    steps = sum(times["_run_epoch"])
    metrics = sum(times["epoch_metrics"])
    ckpt = sum(times["save_checkpoint"])
    per_epoch = steps + metrics + ckpt
    return {
        "epochs": epochs,
        "num_train": run.summary["num_train"],
        "imports_s": IMPORT_SECONDS,
        "prepare_s": sum(times["prepare"]),
        "fit_s": sum(times["fit"]),
        "training_steps_s": steps,
        "epoch_metrics_s": metrics,
        "checkpoints_s": ckpt,
        "evaluation_s": sum(times["rate_distortion"]),
        "figures_s": sum(times["write_figures"]),
        "train_run_s": total,
        "median_epoch_s": sorted(epoch_seconds)[len(epoch_seconds) // 2],
        "metrics_fraction_of_epoch": metrics / per_epoch,
        "checkpoint_fraction_of_epoch": ckpt / per_epoch,
    }


def whole_command(epochs: int) -> float:
    """Wall time of ``pyro-vae train --epochs E`` in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pyro_vae", "train", "--epochs", str(epochs), "--out", f"{tmp}/run"]
        tic = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - tic


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--quick", action="store_true", help="10 epochs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results as JSON ('-': stdout)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 10
    set_threads(args.threads)
    parts = in_process(args.epochs)
    parts["whole_command_s"] = whole_command(args.epochs)
    env = environment()
    print(f"default pyro-vae train, {args.epochs} epochs, {parts['num_train']} training points")
    for key in (
        "imports_s",
        "prepare_s",
        "training_steps_s",
        "epoch_metrics_s",
        "checkpoints_s",
        "evaluation_s",
        "figures_s",
        "train_run_s",
        "whole_command_s",
    ):
        print(f"  {key:<22} {parts[key]:8.2f}")
    print(
        f"  per epoch: metrics {parts['metrics_fraction_of_epoch']:.1%}, "
        f"checkpoint {parts['checkpoint_fraction_of_epoch']:.1%} of the epoch"
    )
    print(f"torch {torch.__version__}, {env['torch_threads']} threads, load {env['loadavg']}")
    result = {
        "benchmark": "train_e2e",
        "environment": env,
        "ratios": {
            "metrics / epoch": parts["metrics_fraction_of_epoch"],
            "checkpoint / epoch": parts["checkpoint_fraction_of_epoch"],
        },
        "results": parts,
    }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
