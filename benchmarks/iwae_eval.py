"""IWAE evaluation throughput: pyro_vae.bounds.iwae against a hand-written logsumexp estimator.

Both evaluate L_K on the same 784-400-50 Bernoulli VAE (pyro_vae's VAE; the baseline calls its
encoder and decoder directly), same K, same points, same particle-chunk size, interleaved in
one process. Reports (datapoints x particles) per second, medians over repeats, the ratio,
and the peak resident memory of a separate process evaluating K=--memory-k (to show that
chunking bounds it). The decoder's rate is given as a fraction of the two multiplies' rate alone
by ``torch.mm`` ("of sgemm") and by the fastest kernel measured, ``torch.mm`` or oneDNN's
("of fastest"); a path keeps a capture on oneDNN's kernels (``matmul="onednn"``), and a last
one a compiled capture (``compile=True``, on the machine's kernels, ``matmul="auto"``; the
bounds' default, which captures on them too): what a bound's default builds for an evaluation
of at least ``COMPILE_CHUNKS`` chunks (10,000: L_5000 of 5,000 digits), timed once compiled;
the compile itself is reported as its warm-up (``--no-compiled`` leaves it out).

    python benchmarks/iwae_eval.py [--k 1000] [--points 1000] [--repeats 3] [--max-rows R] [--quick]
        [--no-compiled]
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import subprocess
import sys
import time

import pyro
import torch
import torch.nn.functional as F
from _common import emit, environment, set_threads

from pyro_vae.bounds import iwae
from pyro_vae.infer.captured import compiler_found
from pyro_vae.infer.captured_log_weights import COMPILE_CHUNKS, CapturedLogWeights
from pyro_vae.infer.onednn_matmul import onednn_available, onednn_linear, resolve_matmul
from pyro_vae.infer.per_datapoint import chunk_sizes, default_max_rows
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE

D, H, Z = 784, 400, 50


def build(seed: int = 0) -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(seed)
    return VAE(Bernoulli(D), latent_dim=Z, hidden=(H,)), (torch.rand(4000, D) < 0.3).float()


@torch.no_grad()
def hand_iwae(vae: VAE, x: torch.Tensor, k: int, data_chunk: int, particle_chunk: int) -> torch.Tensor:
    """The textbook estimator: per datapoint, logsumexp of log p(x,z) - log q(z|x) over K draws."""
    out = []
    for start in range(0, x.shape[0], data_chunk):
        xb = x[start : start + data_chunk]
        loc, scale = vae.encoder(xb)
        chunks = []
        for done in range(0, k, particle_chunk):
            kk = min(particle_chunk, k - done)
            eps = torch.randn(kk, *loc.shape)
            z = loc + scale * eps
            log_px = -F.binary_cross_entropy_with_logits(
                vae.decoder(z), xb.expand(kk, -1, -1), reduction="none"
            ).sum(-1)
            log_pz = -0.5 * (z**2).sum(-1) - 0.5 * Z * math.log(2 * math.pi)
            log_qz = (-0.5 * eps**2 - scale.log()).sum(-1) - 0.5 * Z * math.log(2 * math.pi)
            chunks.append((log_px + log_pz - log_qz).logsumexp(0))
        out.append(torch.stack(chunks).logsumexp(0) - math.log(k))
    return torch.cat(out)


_PEAK_RSS = """
import resource, sys
sys.path.insert(0, 'benchmarks')
import iwae_eval as b
vae, x = b.build()
b.iwae(vae.model, vae.guide, x[:{points}], num_particles={k})
try:  # this process's own peak: ru_maxrss keeps the parent's at fork across exec on Linux
    print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))
except OSError:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_memory(k: int, points: int) -> float:
    """Peak resident memory (MiB) of a fresh process evaluating ``points`` points at ``K=k``."""
    code = _PEAK_RSS.format(points=points, k=k)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # MiB (Linux reports KiB)


def _minor_faults() -> int:
    """Minor page faults of this process so far: memory the allocator handed back to the
    system and touched afresh (see docs/benchmarks.md, "IWAE evaluation")."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def sgemm_rate(rows: int, repeats: int = 10, *, onednn: bool = False) -> float:
    """GFLOP/s of the decoder's two matrix multiplies alone (``rows`` particle-rows, the chunk
    size of the evaluation): the rate the evaluation's decoder could reach at best, so the
    fastest of ``repeats`` (a median let one slow moment of the machine lower the rate, and
    so raise the fraction reached, by a third). ``torch.mm`` (PyTorch's BLAS), or with
    ``onednn=True`` oneDNN's kernel (what ``matmul="onednn"`` runs)."""
    a, w1, w2 = torch.randn(rows, Z), torch.randn(H, Z), torch.randn(D, H)
    flops = 2 * rows * (Z * H + H * D)
    times = []
    for _ in range(repeats + 1):
        tic = time.perf_counter()
        if onednn:
            onednn_linear(onednn_linear(a, w1), w2)
        else:
            torch.mm(torch.mm(a, w1.t()), w2.t())
        times.append(time.perf_counter() - tic)
    return flops / min(times[1:]) / 1e9


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-k", type=int, default=5000)
    parser.add_argument("--max-rows", type=int, default=None, help="chunk size (default: iwae's)")
    parser.add_argument("--quick", action="store_true", help="K=1000, 100 points, 3 repeats, no memory runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--compiled",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time a compiled capture too (where a C++ compiler is found; seconds to compile)",
    )
    parser.add_argument(
        "--json", default=None, help="also write the results as JSON to this file ('-': stdout)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.k, args.points, args.repeats, args.memory_k = 1000, 100, 3, 0
    set_threads(args.threads)
    vae, x = build()
    x = x[: args.points]
    max_rows = args.max_rows or default_max_rows((x,))  # pyro_vae's chunking, given to the baseline too
    data_chunk, particle_chunk = chunk_sizes(args.points, args.k, max_rows)
    paths = {
        "hand-written logsumexp": lambda: hand_iwae(vae, x, args.k, data_chunk, particle_chunk),
        "pyro_vae.bounds.iwae": lambda: iwae(  # the default: captured after AUTO_CAPTURE_AFTER chunks
            vae.model, vae.guide, x, num_particles=args.k, max_rows=max_rows
        ),
        "iwae, capture=False": lambda: iwae(  # every chunk eager
            vae.model, vae.guide, x, num_particles=args.k, max_rows=max_rows, capture=False
        ),
        "iwae, capture=True": lambda: iwae(
            vae.model, vae.guide, x, num_particles=args.k, max_rows=max_rows, capture=True
        ),
        "iwae, capture kept": lambda: iwae(
            vae.model, vae.guide, x, num_particles=args.k, max_rows=max_rows, capture=kept
        ),
    }
    kept_fast = CapturedLogWeights(matmul="onednn") if onednn_available() else None
    if kept_fast is not None:
        paths["kept, matmul='onednn'"] = lambda: iwae(
            vae.model, vae.guide, x, num_particles=args.k, max_rows=max_rows, capture=kept_fast
        )
    compiled = CapturedLogWeights(compile=True, matmul="auto") if args.compiled and compiler_found() else None
    if compiled is not None:  # the default's graphs for an evaluation of COMPILE_CHUNKS chunks or more
        paths["kept, compiled"] = lambda: iwae(
            vae.model, vae.guide, x, num_particles=args.k, max_rows=max_rows, capture=compiled
        )
    # a kept capture's graphs outlive a call (a held-out bound every epoch): captured here, on a
    # few chunks, before the timed calls
    kept = CapturedLogWeights()
    warm_up, compile_warm_up = [], []
    few = x[: 3 * data_chunk]
    with pyro.get_param_store().scope():
        for _ in range(2):  # a call's first chunk (it settles the program's plan) is captured in the second
            tic = time.perf_counter()
            iwae(vae.model, vae.guide, few, num_particles=args.k, max_rows=max_rows, capture=kept)
            warm_up.append(time.perf_counter() - tic)
        for _ in range(2 if kept_fast is not None else 0):
            iwae(vae.model, vae.guide, few, num_particles=args.k, max_rows=max_rows, capture=kept_fast)
        for _ in range(2 if compiled is not None else 0):
            tic = time.perf_counter()
            iwae(vae.model, vae.guide, few, num_particles=args.k, max_rows=max_rows, capture=compiled)
            compile_warm_up.append(time.perf_counter() - tic)
    times: dict[str, list[float]] = {name: [] for name in paths}
    faults: dict[str, list[int]] = {name: [] for name in paths}
    values = {}
    rates: list[float] = []
    fast_rates: list[float] = []
    with pyro.get_param_store().scope():
        names = list(paths)
        for r in range(args.repeats):
            rates.append(sgemm_rate(data_chunk * particle_chunk))
            if kept_fast is not None:
                fast_rates.append(sgemm_rate(data_chunk * particle_chunk, onednn=True))
            for name in names[r % len(names) :] + names[: r % len(names)]:
                faults_before = _minor_faults()
                tic = time.perf_counter()
                values[name] = paths[name]()
                times[name].append(time.perf_counter() - tic)
                faults[name].append(_minor_faults() - faults_before)
    work = args.points * args.k
    decoder_gflop = 2 * work * (Z * H + H * D) / 1e9
    rate = max(rates)
    fastest = max(rates + fast_rates)
    base = statistics.median(times["hand-written logsumexp"])
    env = environment()
    print(
        f"K={args.k}, {args.points} points, chunks of {data_chunk} points x {particle_chunk} particles, "
        f"{env['torch_threads']} threads, {args.repeats} interleaved repeats, "
        f"matmul='auto' is {resolve_matmul('auto')!r} here, load {env['loadavg']}"
    )
    print(
        f"kept capture's warm-up, two calls of 3 chunks: {warm_up[0]:.2f} s (the process's first capture, "
        f"imports included), {warm_up[1]:.2f} s"
    )
    if compiled is not None:
        print(
            f"compiled capture's warm-up, two calls of 3 chunks: {compile_warm_up[0]:.2f} s (the process's "
            f"first compile, TorchInductor's imports included), {compile_warm_up[1]:.2f} s; "
            f"{compiled.compiled_graphs} of {compiled.graphs} graphs compiled; the default compiles "
            f"from {COMPILE_CHUNKS} chunks, this evaluation has "
            f"{-(-args.points // data_chunk) * -(-args.k // particle_chunk)}"
        )
    print(
        f"decoder matmuls alone, fastest: {rate:.1f} GFLOP/s torch.mm"
        + (f", {max(fast_rates):.1f} GFLOP/s oneDNN" if fast_rates else "")
        + f" ({decoder_gflop:.0f} GFLOP in the evaluation)"
    )
    print(
        f"{'path':<24} {'median s':>9} {'points*K / s':>14} {'throughput ratio':>17} {'decoder GFLOP/s':>16}"
        f" {'of sgemm':>9} {'of fastest':>10}  page faults per repeat"
    )
    rows = []
    for name, t in times.items():
        med = statistics.median(t)
        achieved = decoder_gflop / med
        rows.append(
            {
                "path": name,
                "median_s": med,
                "throughput": work / med,
                "ratio": base / med,
                "decoder_gflops": achieved,
                "fraction_of_sgemm": achieved / rate,
                "fraction_of_fastest_sgemm": achieved / fastest,
                "minor_page_faults": faults[name],
            }
        )
        print(
            f"{name:<24} {med:>9.2f} {work / med:>14.0f} {base / med:>17.3f} {achieved:>16.1f}"
            f" {achieved / rate:>9.2f} {achieved / fastest:>10.2f}  {', '.join(map(str, faults[name]))}"
        )
    ours, hand = (values[n].mean().item() for n in ("pyro_vae.bounds.iwae", "hand-written logsumexp"))
    print(
        f"mean L_K: pyro_vae {ours:.3f}, hand {hand:.3f} (difference {ours - hand:+.3f}, independent draws)"
    )
    memory = {}
    if args.memory_k:
        small_k = max(1, args.memory_k // 10)
        # three fresh processes each: where the allocator puts a chunk's tensors varies the peak
        memory = {str(k): [_peak_memory(k, 100) for _ in range(3)] for k in (small_k, args.memory_k)}
        print(
            "peak RSS, 100 points, three processes each: "
            + "; ".join(f"K={k}: {', '.join(f'{m:.0f}' for m in ms)} MiB" for k, ms in memory.items())
        )
    result = {
        "benchmark": "iwae_eval",
        "k": args.k,
        "points": args.points,
        "chunk": [data_chunk, particle_chunk],
        "environment": env,
        "sgemm_gflops": rate,
        "onednn_sgemm_gflops": max(fast_rates) if fast_rates else None,
        "capture_warm_up_s": warm_up,
        "compile_warm_up_s": compile_warm_up,
        "compiled_graphs": compiled.compiled_graphs if compiled is not None else 0,
        "ratios": {name: base / statistics.median(times[name]) for name in names[1:]},
        "results": rows,
        "peak_rss_mib": memory,
    }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
