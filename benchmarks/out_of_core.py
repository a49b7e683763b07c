"""Training on a memory-mapped .npy several times larger than the memory the process may use.

Writes a binary data matrix of ``--rows`` x ``--features`` float32 (chunk by chunk, never whole
in memory), then trains a Bernoulli VAE on it for ``--epochs`` in child processes whose data
segment is capped at ``--limit-mb`` (``resource.setrlimit(RLIMIT_DATA)``: private, anonymous
memory such as a loaded array; a read-only file mapping does not count against it):

- ``mmap``: ``ArrayRows(np.load(path, mmap_mode="r"))``, minibatches read in shuffled blocks of
  contiguous rows; the pages read are released again (``madvise``), so the resident set stays
  flat;
- ``load``: ``np.load(path)`` into memory, as an in-memory fit would need (expected to fail
  under the cap).

Each child reports its peak resident set: ``VmHWM`` of /proc/self/status, and
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (which Linux carries over from the process that
spawned the child: the data are therefore written by another child), and its wall time. Run
from the repository root::

    python benchmarks/out_of_core.py --rows 800000 --limit-mb 600 --batch-size 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_data(path: Path, rows: int, features: int, *, seed: int = 0, chunk: int = 20000) -> None:
    """A binary matrix with low-rank structure, written into an .npy memory map chunk by chunk."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(4, features)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, features))
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        logits = rng.normal(size=(n, 4)).astype(np.float32) @ basis
        out[start : start + n] = rng.random((n, features), dtype=np.float32) < 1 / (1 + np.exp(-logits))
    out.flush()
    del out


def _peak_kb() -> dict[str, int]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vm_hwm_kb": int(status["VmHWM"].split()[0]),
    }


def child(mode: str, path: Path, *, epochs: int, batch_size: int, limit_mb: int) -> dict:
    limit = limit_mb * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    import torch

    from pyro_vae.data import ArrayRows
    from pyro_vae.likelihoods import Bernoulli
    from pyro_vae.models import VAE
    from pyro_vae.train import fit

    torch.set_num_threads(1)
    tic = time.perf_counter()
    try:
        if mode == "mmap":
            mapped = np.load(path, mmap_mode="r")
            data = ArrayRows(mapped, block_size=64)
        else:
            mapped = np.load(path)
            data = torch.from_numpy(mapped)
    except MemoryError as e:
        return {"mode": mode, "status": f"MemoryError: {e}", **_peak_kb()}
    rows, features = mapped.shape
    validation = torch.as_tensor(np.array(mapped[:1000]))
    torch.manual_seed(0)
    vae = VAE(Bernoulli(features), latent_dim=8, hidden=(128,))
    result = fit(
        vae.model,
        vae.guide,
        data,
        validation=validation,
        epochs=epochs,
        batch_size=batch_size,
        eval_max_points=1000,
        progress=False,
    )
    return {
        "mode": mode,
        "status": "trained",
        "rows": rows,
        "steps": result.num_steps,
        "val_elbo": result.last("val_elbo"),
        "seconds": time.perf_counter() - tic,
        **_peak_kb(),
    }


QUICK_ROWS, QUICK_LIMIT_MB = 150_000, 600
QUICK_HELP = f"{QUICK_ROWS} rows (448 MiB) under RLIMIT_DATA {QUICK_LIMIT_MB} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--features", type=int, default=784)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit-mb", type=int, default=1200, help="RLIMIT_DATA of the training process")
    parser.add_argument("--path", type=Path, default=Path("/tmp/pyro_vae_out_of_core.npy"))
    parser.add_argument(
        "--json",
        "--out",
        dest="json",
        default=None,
        help="results as JSON to this file (-: last line of stdout)",
    )
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    parser.add_argument("--child", choices=["mmap", "load"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-write", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.limit_mb = QUICK_ROWS, QUICK_LIMIT_MB
    if args.child:
        result = child(
            args.child, args.path, epochs=args.epochs, batch_size=args.batch_size, limit_mb=args.limit_mb
        )
        print(json.dumps(result))
        return
    if args.child_write:
        write_data(args.path, args.rows, args.features)
        return
    if not args.path.exists() or np.load(args.path, mmap_mode="r").shape != (args.rows, args.features):
        tic = time.perf_counter()  # in a child: the writer's resident pages must not count here
        cmd = [sys.executable, __file__, "--child-write", "--path", str(args.path)]
        subprocess.run([*cmd, "--rows", str(args.rows), "--features", str(args.features)], check=True)
        print(f"wrote {args.path} in {time.perf_counter() - tic:.1f} s")
    size_mb = args.path.stat().st_size / 2**20
    print(f"data: {args.rows} x {args.features} float32 = {size_mb:.0f} MiB; RLIMIT_DATA {args.limit_mb} MiB")
    print(f"load average {os.getloadavg()}")
    results = []
    for mode in ("load", "mmap"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--path",
            str(args.path),
            "--epochs",
            str(args.epochs),
        ]
        cmd += ["--batch-size", str(args.batch_size), "--limit-mb", str(args.limit_mb)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if not lines:
            result = {
                "mode": mode,
                "status": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}",
            }
        else:
            result = json.loads(lines[-1])
        results.append(result)
        peak, maxrss = result.get("vm_hwm_kb", 0) / 1024, result.get("ru_maxrss_kb", 0) / 1024
        trained = f", {result['steps']} steps in {result['seconds']:.1f} s" if "steps" in result else ""
        print(f"{mode:>5}: {result['status']}; peak RSS (VmHWM) {peak:.0f} MiB{trained}")
        print(f"       = {peak / size_mb:.2f} x the data; ru_maxrss {maxrss:.0f} MiB")
    from _common import emit, environment  # here: a child sets its memory limit before torch loads

    report = {"size_mib": size_mb, "limit_mib": args.limit_mb, "results": results}
    report["environment"] = environment()
    mapped = next((r for r in results if r["mode"] == "mmap" and "vm_hwm_kb" in r), None)
    if mapped is not None:  # the figure to compare between runs
        report["ratios"] = {"mmap peak RSS / data size": mapped["vm_hwm_kb"] / 1024 / size_mb}
    emit(report, args.json)


if __name__ == "__main__":
    main()
