"""The benchmark scripts run, with tiny settings, and write the figures they promise (their
timings are not checked here: speed is measured by running them, see docs/benchmarks.md)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{script}.json"
    subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), *args, "--json", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(out.read_text())


def _finite_positive(ratios: dict) -> bool:
    return all(math.isfinite(r) and r > 0 for r in ratios.values())


@pytest.mark.slow
def test_train_step_times_every_path_and_the_floor(tmp_path):
    result = _run("train_step", "--steps", "3", "--warmup", "1", tmp_path=tmp_path)
    assert {
        "hand-written PyTorch",
        "pyro_vae (fit's step)",
        "pyro_vae (fit's step, run of 50,000 steps)",
        "pyro_vae eager (capture_after=None)",
        "floor: matmuls + one Adam kernel",
    } <= set(result["ratios"])
    assert result["ratios"]["hand-written PyTorch"] == 1.0
    assert _finite_positive(result["ratios"])
    assert result["environment"]["torch_threads"] >= 1


@pytest.mark.slow
def test_iwae_eval_times_the_four_paths(tmp_path):
    result = _run(
        "iwae_eval", "--k", "20", "--points", "6", "--repeats", "1", "--memory-k", "0", tmp_path=tmp_path
    )
    assert {"pyro_vae.bounds.iwae", "iwae, capture=True", "iwae, capture kept"} <= set(result["ratios"])
    from pyro_vae.infer.captured import compiler_found

    if compiler_found():  # the compiled capture: what the default builds for a long evaluation
        assert "kept, compiled" in result["ratios"] and result["compiled_graphs"] >= 1
    assert _finite_positive(result["ratios"])
    for row in result["results"]:
        assert 0 < row["fraction_of_fastest_sgemm"] <= row["fraction_of_sgemm"]


@pytest.mark.slow
def test_estimator_step_times_each_estimator(tmp_path):
    result = _run("estimator_step", "--steps", "2", "--warmup", "1", "--particles", "2", tmp_path=tmp_path)
    assert {"VIMCO pyro_vae", "Gumbel-softmax pyro_vae", "REINFORCE pyro_vae"} <= set(result["ratios"])
    assert _finite_positive(result["ratios"])
