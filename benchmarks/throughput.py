"""Training throughput on full Fashion-MNIST with 1 and 2 processes, and the cost of the
gradient all-reduce alone.

One epoch of :func:`pyro_vae.train.fit` over the 60,000 training images (binarized;
synthetic Bernoulli data of the same shape when Debian's ``dataset-fashion-mnist`` is not
installed), the VAE of ``benchmarks/train_step.py`` (784-400-(50+50), 50-400-784), global
batch 128: points per second with one process, and with two processes started like
``torchrun`` (``torch.multiprocessing`` spawn, gloo on the loopback interface, a shard of 64
rows each). Then, in the two processes, the all-reduce of one step's flattened gradient
(all the model's parameters, float32) timed by itself. Runs alternate 1 and 2 processes;
we report medians over ``--runs`` and the load average, since the machine is shared.

On a machine with two cores, two processes cannot be faster than one: this measures the
overhead of data parallelism (the all-reduce, smaller per-rank batches, the barriers), not
a speed-up.

    python benchmarks/throughput.py [--runs 3] [--epochs 1] [--json out.json] [--quick]

``--quick`` (what ``benchmarks/run_all.py`` runs): one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import time
from pathlib import Path

import torch
from _common import emit, environment

D, H, K, B, LR = 784, 400, 50, 128, 1e-3


def load_data() -> tuple[torch.Tensor, str]:
    from pyro_vae.data import FASHION_MNIST_DIR, load_idx

    if FASHION_MNIST_DIR.is_dir():
        x = load_idx(FASHION_MNIST_DIR, split="train", name="fashion-mnist", binarize=True, seed=0).x
        return x, "Fashion-MNIST training set (binarized)"
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(60000, D, generator=gen) < 0.3).float(), "synthetic Bernoulli (Fashion-MNIST absent)"


def _train(x: torch.Tensor, *, epochs: int, distributed: bool) -> float:
    """Seconds of ``epochs`` epochs of fit (metrics on one row: their cost is negligible)."""
    import pyro

    from pyro_vae.likelihoods import Bernoulli
    from pyro_vae.models import VAE
    from pyro_vae.train import Distributed, fit

    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE(Bernoulli(D), latent_dim=K, hidden=(H,))
    tic = time.perf_counter()
    fit(
        vae.model,
        vae.guide,
        x,
        epochs=epochs,
        batch_size=B,
        lr=LR,
        seed=0,
        eval_max_points=1,
        progress=False,
        distributed=Distributed(timeout=600) if distributed else False,
    )
    return time.perf_counter() - tic


def _allreduce_ms(numel: int, repeats: int = 50) -> float:
    """Median milliseconds of one all-reduce of ``numel`` float32 values (a step's gradient)."""
    import torch.distributed as dist

    flat = torch.randn(numel)
    for _ in range(5):
        dist.all_reduce(flat)
    times = []
    for _ in range(repeats):
        dist.barrier()
        tic = time.perf_counter()
        dist.all_reduce(flat)
        times.append(time.perf_counter() - tic)
    return statistics.median(times) * 1e3


def _rank(rank: int, world: int, port: int, epochs: int, threads: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    import torch.distributed as dist

    x, _ = load_data()
    dist.init_process_group("gloo")
    try:
        seconds = _train(x, epochs=epochs, distributed=True)
        numel = sum(p.numel() for p in _vae_parameters())
        reduce_ms = _allreduce_ms(numel)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": seconds, "allreduce_ms": reduce_ms, "numel": numel}))


def _vae_parameters() -> list[torch.Tensor]:
    from pyro_vae.likelihoods import Bernoulli
    from pyro_vae.models import VAE

    return list(VAE(Bernoulli(D), latent_dim=K, hidden=(H,)).parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(epochs: int, threads: int, out: Path) -> dict:
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, epochs, threads, str(out))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(1800)
        if p.is_alive():
            p.kill()
            raise SystemExit("a rank did not finish within 30 minutes")
        if p.exitcode != 0:
            raise SystemExit(f"a rank failed (exit {p.exitcode})")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument(
        "--json", default=None, help="also write the results as JSON here (-: last line of stdout)"
    )
    parser.add_argument("--quick", action="store_true", help="one run")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    torch.set_num_threads(args.threads)
    x, name = load_data()
    n = x.shape[0] * args.epochs
    print(
        f"data: {name}, {x.shape[0]} x {x.shape[1]}; global batch {B}; {args.threads} thread(s) per process"
    )
    one, two, reduce_ms, loads = [], [], [], []
    numel = 0
    for run in range(args.runs):
        loads.append(os.getloadavg()[0])
        one.append(n / _train(x, epochs=args.epochs, distributed=False))
        loads.append(os.getloadavg()[0])
        res = _two_processes(args.epochs, args.threads, Path(f"/tmp/throughput-{os.getpid()}.json"))
        two.append(n / res["seconds"])
        reduce_ms.append(res["allreduce_ms"])
        numel = res["numel"]
        print(
            f"run {run + 1}: 1 process {one[-1]:.0f} points/s, 2 processes {two[-1]:.0f} points/s, "
            f"all-reduce {reduce_ms[-1]:.2f} ms; load average {loads[-2]:.2f} / {loads[-1]:.2f}"
        )
    steps = -(-x.shape[0] // B)
    result = {
        "data": name,
        "points": x.shape[0],
        "epochs": args.epochs,
        "global_batch": B,
        "threads_per_process": args.threads,
        "points_per_second_1_process": statistics.median(one),
        "points_per_second_2_processes": statistics.median(two),
        "ratio_2_over_1": statistics.median(two) / statistics.median(one),
        "allreduce_ms_per_step": statistics.median(reduce_ms),
        "allreduce_numel": numel,
        "allreduce_share_of_2_process_step": statistics.median(reduce_ms)
        / 1e3
        / (n / statistics.median(two) / (steps * args.epochs)),
        "load_average": loads,
        "runs": args.runs,
    }
    print(f"{'':<28} {'median':>12}")
    print(f"{'1 process, points/s':<28} {result['points_per_second_1_process']:>12.0f}")
    print(f"{'2 processes, points/s':<28} {result['points_per_second_2_processes']:>12.0f}")
    print(f"{'ratio 2 / 1':<28} {result['ratio_2_over_1']:>12.3f}")
    print(f"{'all-reduce, ms/step':<28} {result['allreduce_ms_per_step']:>12.3f}  ({numel} float32)")
    print(f"{'all-reduce share of a step':<28} {result['allreduce_share_of_2_process_step']:>12.1%}")
    print(f"load average (1 min) over the runs: {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores")
    result["ratios"] = {"2 processes / 1, points per second": result["ratio_2_over_1"]}
    result["environment"] = environment()
    emit(result, args.json)


if __name__ == "__main__":
    main()
