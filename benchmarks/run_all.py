"""Run every benchmark in benchmarks/ with short settings and write one JSON of the results.

    python benchmarks/run_all.py [--out benchmarks.json] [--only train_step iwae_eval] [--full]

The convention a benchmark follows to join (nothing here needs editing):

- it is a script ``benchmarks/<name>.py`` (names starting with ``_`` are helpers, not
  benchmarks) that runs as ``python benchmarks/<name>.py --quick --json -``;
- ``--quick`` makes it short (a minute or two on a 2-core machine); ``--json -`` makes its
  *last line on stdout* one JSON object: its figures, ideally with ``"ratios"`` (a dict
  ``{path: ours / baseline}``, the figures to compare between runs) and ``"environment"``
  (``_common.environment()``: load, threads, versions);
- it signals that it cannot run here (a missing optional dependency, no GPU) either by
  printing ``{"skipped": "reason"}`` as that last line, or by failing with
  ``ModuleNotFoundError``/``ImportError``; both are recorded as skipped, not as failures.

Each benchmark runs in its own process, one after the other (never two at once: they would
time each other), with a timeout. The output JSON has one entry per benchmark (``status``:
``ok``, ``skipped`` or ``failed``, the wall time, the script's JSON), the load average before
and after each, and the versions and threads of this interpreter; a table of the ratios is
printed at the end, and the command exits with status 1 when any benchmark failed. ``--full``
runs the scripts with their default (long) settings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def discover(only: list[str] | None = None) -> list[Path]:
    """The benchmark scripts: ``benchmarks/*.py`` but helpers (``_*.py``) and this runner."""
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py")
    if only:
        scripts = [p for p in scripts if p.stem in only]
    return scripts


def _last_json(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _missing_dependency(stderr: str) -> str | None:
    match = re.search(r"(ModuleNotFoundError|ImportError): (.*)", stderr)
    return match.group(2).strip() if match else None


def run_one(script: Path, *, full: bool, timeout: float) -> dict:
    """Run one benchmark script in a fresh process and classify its outcome."""
    command = [sys.executable, str(script), "--json", "-"] + ([] if full else ["--quick"])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    entry: dict = {"script": script.name, "command": " ".join(command[1:]), "loadavg_before": os.getloadavg()}
    tic = time.perf_counter()
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        entry.update(status="failed", reason=f"timed out after {timeout:.0f} s")
        return entry
    finally:
        entry["wall_s"] = time.perf_counter() - tic
        entry["loadavg_after"] = os.getloadavg()
    result = _last_json(out.stdout)
    if out.returncode == 0 and result is not None:
        if "skipped" in result:
            entry.update(status="skipped", reason=str(result["skipped"]))
        else:
            entry.update(status="ok", result=result)
        return entry
    missing = _missing_dependency(out.stderr) if out.returncode != 0 else None
    if missing is not None:
        entry.update(status="skipped", reason=f"missing dependency: {missing}")
    else:
        tail = (out.stderr.strip().splitlines() or ["no JSON line on stdout"])[-1]
        entry.update(status="failed", reason=f"exit {out.returncode}: {tail}")
    return entry


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="benchmarks.json", help="where to write the JSON (default benchmarks.json)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names (script stems) to run")
    parser.add_argument("--full", action="store_true", help="the scripts' default settings, not --quick")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from _common import environment

    from pyro_vae._io import atomic_write_json

    report = {"environment": environment(), "mode": "full" if args.full else "quick", "benchmarks": {}}
    for script in discover(args.only):
        print(f"running {script.name} ...", flush=True)
        entry = run_one(script, full=args.full, timeout=args.timeout)
        report["benchmarks"][script.stem] = entry
        print(f"  {entry['status']} in {entry['wall_s']:.0f} s {entry.get('reason', '')}", flush=True)
        atomic_write_json(args.out, report)  # what has run so far survives an abort
    report["environment_after"] = environment()
    atomic_write_json(args.out, report)
    print(f"\n{'benchmark':<18} {'path':<40} {'ratio':>8}")
    for name, entry in report["benchmarks"].items():
        ratios = entry.get("result", {}).get("ratios", {})
        if entry["status"] != "ok" or not ratios:
            print(f"{name:<18} {entry['status'] + ': ' + entry.get('reason', 'no ratios'):<49}")
        for path, ratio in ratios.items():
            print(f"{name:<18} {path:<40} {ratio:>8.3f}")
    env = report["environment"]
    print(
        f"torch {env['torch']}, pyro {env['pyro']}, {env['torch_threads']} threads, "
        f"load {env['loadavg']} -> {report['environment_after']['loadavg']}; written to {args.out}"
    )
    return report


def exit_status(report: dict) -> int:
    """1 when any benchmark failed (a script that no longer runs is a regression too), else 0."""
    return int(any(entry["status"] == "failed" for entry in report["benchmarks"].values()))


if __name__ == "__main__":
    sys.exit(exit_status(main()))
