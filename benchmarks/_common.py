"""What every benchmark records with its figures: the machine's load, threads and versions."""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable

import pyro
import torch


def environment() -> dict:
    """Load average (1, 5, 15 min), threads, versions, date: to read a ratio against."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
    }


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads`` when given (the benchmark then states it)."""
    if threads is not None:
        torch.set_num_threads(threads)


def interleave(paths: dict, *, steps: int, warmup: int, seed: int = 0) -> dict:
    """Time each path ``steps`` times, interleaved step by step in an order shuffled afresh
    every round (seeded), so that machine noise hits every path alike and no path always runs
    after the same one (a rotation keeps each path's predecessor, whose memory traffic
    evicts the caches: measured, that alone moved two identical paths 10% apart):
    ``{name: [seconds, ...]}``."""
    times: dict = {name: [] for name in paths}
    for _ in range(warmup):
        for f in paths.values():
            f()
    names = list(paths)
    order = random.Random(seed)
    for _ in range(steps):
        order.shuffle(names)
        for name in names:
            tic = time.perf_counter()
            paths[name]()
            times[name].append(time.perf_counter() - tic)
    return times


def summary(t: list[float]) -> dict:
    q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
    return {"median_ms": statistics.median(t) * 1e3, "q1_ms": q[0] * 1e3, "q3_ms": q[2] * 1e3}


def ratio_table(times: dict[str, list[float]], baseline: str) -> list[dict]:
    """Print each path's median, interquartile range and ratio to ``baseline``'s median; the rows."""
    base = statistics.median(times[baseline])
    rows = []
    print(f"{'path':<36} {'median ms/step':>15} {'IQR ms':>15} {'ratio':>7}")
    for name, t in times.items():
        row = {"path": name, **summary(t), "ratio": statistics.median(t) / base}
        rows.append(row)
        iqr = f"{row['q1_ms']:.2f}-{row['q3_ms']:.2f}"
        print(f"{name:<36} {row['median_ms']:>15.3f} {iqr:>15} {row['ratio']:>7.3f}")
    return rows


def emit(result: dict, target: str | None) -> None:
    """Write ``result`` as JSON to the file ``target`` (written to a temporary file, then
    renamed), or with ``-`` as one final line on stdout (``benchmarks/run_all.py`` reads it)."""
    if target == "-":
        print(json.dumps(result, default=str))
    elif target:
        from pyro_vae._io import atomic_write_json

        atomic_write_json(target, result)


Step = Callable[[], object]


def other_matmul() -> str:
    """The kernels ``matmul="auto"`` (fit's default) does not pick on this machine: the
    benchmarks time them beside the default."""
    from pyro_vae.infer.onednn_matmul import resolve_matmul

    return "aten" if resolve_matmul("auto") == "onednn" else "onednn"
