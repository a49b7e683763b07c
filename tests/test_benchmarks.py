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
    # fit's step on a long run: compiled where a compiler is found (the script raises if that
    # compile is not kept), uncompiled as fit runs it where none is
    assert {"VIMCO long run", "Gumbel-softmax long run", "REINFORCE long run"} <= set(result["ratios"])
    assert _finite_positive(result["ratios"])


def _run_all():
    """``benchmarks/run_all.py`` as a module."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCHMARKS))
    return run_all


_SCRIPTS = [p.stem for p in _run_all().discover()]


@pytest.mark.parametrize("script", _SCRIPTS)
def test_every_benchmark_takes_run_alls_options(script):
    """``benchmarks/run_all.py`` runs each script as ``<script> --json - --quick``: every one
    must take both (a script that does not is reported as failed there)."""
    shown = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), "--help"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "--quick" in shown and "--json" in shown, shown


def test_run_all_classifies_outcomes_and_exits_1_when_one_failed(tmp_path):
    """A script that rejects the options (as five did before they took them) is ``failed``,
    one that prints ``{"skipped": ...}`` is ``skipped``, and the command's exit status is 1
    only when one failed."""
    run_all = _run_all()
    rejecting = tmp_path / "rejecting.py"
    rejecting.write_text("import argparse\nargparse.ArgumentParser().parse_args()\n")
    skipping = tmp_path / "skipping.py"
    skipping.write_text('import json\nprint("figures")\nprint(json.dumps({"skipped": "no GPU"}))\n')
    failed = run_all.run_one(rejecting, full=False, timeout=60)
    skipped = run_all.run_one(skipping, full=False, timeout=60)
    assert failed["status"] == "failed" and "unrecognized arguments" in failed["reason"]
    assert skipped["status"] == "skipped" and skipped["reason"] == "no GPU"
    assert run_all.exit_status({"benchmarks": {"a": skipped, "b": failed}}) == 1
    assert run_all.exit_status({"benchmarks": {"a": skipped}}) == 0


@pytest.mark.slow
def test_run_all_writes_one_json_of_the_benchmarks_it_ran(tmp_path):
    out = tmp_path / "all.json"
    command = [sys.executable, str(BENCHMARKS / "run_all.py"), "--out", str(out), "--only", "gpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert list(report["benchmarks"]) == ["gpu"]
    assert report["benchmarks"]["gpu"]["status"] in ("ok", "skipped")  # skipped without a GPU
    assert report["mode"] == "quick" and "loadavg" in report["environment"]
