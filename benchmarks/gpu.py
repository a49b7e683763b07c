"""GPU figures: the training step against hand-written PyTorch, and IWAE evaluation throughput.

The models of ``benchmarks/train_step.py`` (the same 784-400-(50+50) / 50-400-784 VAE,
batch 128, Adam), on ``cuda``: pyro_vae's step (:func:`pyro_vae.train.train_step` with
:class:`~pyro_vae.infer.MeanFieldELBO`, what :func:`~pyro_vae.train.fit` runs) and the
hand-written one, interleaved, each timed with ``torch.cuda.synchronize()``; medians and
their ratio. Then :func:`pyro_vae.bounds.iwae` on 1,000 points at several K: points per
second. Without a GPU it says so and exits 0.

    python benchmarks/gpu.py [--steps 300] [--json out.json] [--quick]

``--quick`` (what ``benchmarks/run_all.py`` runs): 30 steps, K in 1 and 50. Without a GPU the
JSON is ``{"skipped": ...}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment
from train_step import LR, B, D, H, HandVAE, K, N, hand_step

from pyro_vae.bounds import iwae
from pyro_vae.infer import MeanFieldELBO
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import train_step


def pyro_vae_step(x: torch.Tensor) -> tuple[VAE, Callable[[], None]]:
    """The step of ``train_step.py``'s ``pyro_vae_step``, with the model on ``x``'s device."""
    vae = VAE(Bernoulli(D), latent_dim=K, hidden=(H,), name="pyro_vae").to(x.device)
    loss = MeanFieldELBO()
    kwargs = {"num_data": N}
    loss.loss(vae.model, vae.guide, x, **kwargs)
    params = [p for n, p in pyro.get_param_store().named_parameters() if n.startswith("pyro_vae_")]
    opt = torch.optim.Adam(params, lr=LR)
    return vae, lambda: train_step(loss, opt, vae.model, vae.guide, (x,), kwargs)


def timed(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    tic = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - tic


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--ks", default="1,50,500", help="K values of the IWAE throughput")
    parser.add_argument(
        "--json", default=None, help="also write the results as JSON here (-: last line of stdout)"
    )
    parser.add_argument("--quick", action="store_true", help="30 steps, K in 1 and 50")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.ks = 30, 5, "1,50"
    if not torch.cuda.is_available():
        why = "no CUDA GPU here (torch.cuda.is_available() is False): no GPU figures to record"
        print(why)
        emit({"skipped": why}, args.json)
        return 0
    device = torch.device("cuda")
    torch.manual_seed(0)
    x = (torch.rand(B, D, device=device) < 0.3).float()
    hand = HandVAE().to(device)
    results: dict = {"device": torch.cuda.get_device_name(device), "batch": B}
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        vae, ours = pyro_vae_step(x)
        steps = {"hand-written PyTorch": hand_step(hand, torch.optim.Adam(hand.parameters(), lr=LR), x)}
        steps["pyro_vae (fit's step)"] = ours
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.warmup):
            for f in steps.values():
                f()
        names = list(steps)
        for i in range(args.steps):
            for name in names[i % 2 :] + names[: i % 2]:
                times[name].append(timed(steps[name]))
        base = statistics.median(times["hand-written PyTorch"])
        print(f"GPU: {results['device']}")
        print(f"{'path':<24} {'median ms/step':>15} {'ratio':>7}")
        results["train_step"] = {}
        for name, t in times.items():
            med = statistics.median(t)
            results["train_step"][name] = {"median_ms": med * 1e3, "ratio": med / base}
            print(f"{name:<24} {med * 1e3:>15.3f} {med / base:>7.3f}")
        data = (torch.rand(1000, D, device=device) < 0.3).float()
        results["iwae_points_per_second"] = {}
        print(f"{'IWAE K':<10} {'points/s':>12}")
        for k in (int(v) for v in args.ks.split(",")):
            iwae(vae.model, vae.guide, data[:10], num_particles=k)  # warm-up
            runs = [timed(lambda k=k: iwae(vae.model, vae.guide, data, num_particles=k)) for _ in range(3)]
            rate = data.shape[0] / statistics.median(runs)
            results["iwae_points_per_second"][k] = rate
            print(f"{k:<10} {rate:>12.0f}")
    results["ratios"] = {name: row["ratio"] for name, row in results["train_step"].items()}
    results["environment"] = environment()
    emit(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
