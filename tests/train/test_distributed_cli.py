"""``torchrun --nproc-per-node 2 -m pyro_vae train`` end to end, on CPU with gloo."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae.commands.configs import TrainConfig
from pyro_vae.commands.train import train_run
from pyro_vae.train import load_checkpoint

pytestmark = pytest.mark.slow


def _torchrun() -> list[str]:
    beside = Path(sys.executable).parent / "torchrun"
    found = str(beside) if beside.exists() else shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def test_torchrun_two_processes_train_a_run_and_one_process_resumes_it(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--data", "digits", "--epochs", "1", "--batch-size", "128", "--hidden", "16"]
    argv += ["--latent-dim", "2", "--eval-particles", "1", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "pyro_vae", *argv],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test ELBO") == 1  # rank 0 alone reports
    written = sorted(p.name for p in out.iterdir())
    files = "checkpoint.pt config.json curves.png latent.png metrics.csv reconstructions.png samples.png"
    assert written == sorted(f"{files} summary.json".split())  # no lock left, no temporary file
    saved = load_checkpoint(out / "checkpoint.pt")
    assert len(saved["rank_rng"]) == 2 and saved["epoch"] == 1

    config = TrainConfig(epochs=2)
    run = train_run(config, out, resume=True, progress=False, distributed=False)  # 2 processes, then 1
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert run.fit.num_steps == 2 * saved["step"]
