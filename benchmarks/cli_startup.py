"""Start-up of the command line: ``pyro-vae --help``, ``pyro-vae <command> --help`` and
``import pyro_vae``, whole-process wall time in fresh interpreters (median of ``--repeats``,
after one warm-up run), against a bare ``python -c pass``. Target: every help under 0.5 s.

    python benchmarks/cli_startup.py [--repeats 5] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import pyro_vae": ["-c", "import pyro_vae"],
    "pyro-vae --help": ["-m", "pyro_vae", "--help"],
    "pyro-vae train --help": ["-m", "pyro_vae", "train", "--help"],
    "pyro-vae evaluate --help": ["-m", "pyro_vae", "evaluate", "--help"],
    "pyro-vae compare --help": ["-m", "pyro_vae", "compare", "--help"],
}


def wall(args: list[str]) -> float:
    tic = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, capture_output=True)
    return time.perf_counter() - tic


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--threads", type=int, default=None, help="accepted for run_all.py; unused")
    parser.add_argument("--json", default=None, help="also write the results as JSON ('-': stdout)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 3
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():
        wall(command)  # warm-up (file cache)
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():  # interleaved
            times[name].append(wall(command))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, med in medians.items():
        print(f"{name:<28} {med:6.3f} s")
    load = list(os.getloadavg())
    print(f"median of {args.repeats} interleaved runs, load {load}")
    result = {
        "benchmark": "cli_startup",
        "environment": {"loadavg": load, "python": sys.version.split()[0]},
        # seconds, not ratios: the target is absolute (every help < 0.5 s)
        "ratios": {f"{name} (s)": med for name, med in medians.items()},
        "results": medians,
    }
    if args.json == "-":
        print(json.dumps(result))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
