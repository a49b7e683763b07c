"""Time one training step: pyro_vae's default path against a hand-written PyTorch VAE.

Both are the same network (784-400-(50+50) encoder, 50-400-784 decoder, ReLU, softplus
scale, Bernoulli likelihood), batch 128, the same Adam. Steps are interleaved in one
process so that machine noise hits both alike; we report medians and their ratio.

    python benchmarks/train_step.py [--steps 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import pyro
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.infer import MeanFieldELBO
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import train_step

D, H, K, B, N, LR = 784, 400, 50, 128, 60000, 1e-3


class HandVAE(nn.Module):
    """The reference: the textbook PyTorch VAE with the same layers as pyro_vae's."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, 2 * K))
        self.dec = nn.Sequential(nn.Linear(K, H), nn.ReLU(), nn.Linear(H, D))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        loc, rho = self.enc(x).split(K, dim=-1)
        scale = F.softplus(rho) + 1e-5
        z = loc + scale * torch.randn_like(scale)
        rec = -F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
        kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1)
        return -(rec - kl).sum() * (N / x.shape[0])


def hand_step(model: HandVAE, opt: torch.optim.Optimizer, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        loss = model.loss(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def pyro_vae_step(x: torch.Tensor) -> Callable[[], None]:
    """The step :func:`pyro_vae.train.fit` runs by default (validation off, as in fit)."""
    vae = VAE(Bernoulli(D), latent_dim=K, hidden=(H,), name="pyro_vae")
    loss = MeanFieldELBO()
    kwargs = {"num_data": N}
    loss.loss(vae.model, vae.guide, x, **kwargs)  # registers the parameters, as fit does
    prefix = f"{vae.name}_"
    params = [p for n, p in pyro.get_param_store().named_parameters() if n.startswith(prefix)]
    opt = torch.optim.Adam(params, lr=LR)
    return lambda: train_step(loss, opt, vae.model, vae.guide, (x,), kwargs)


def pyro_svi_step(x: torch.Tensor) -> Callable[[], None]:
    """Plain Pyro for context: SVI with Trace_ELBO and pyro.optim.Adam."""
    vae = VAE(Bernoulli(D), latent_dim=K, hidden=(H,), name="svi")
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), pyro.infer.Trace_ELBO())
    return lambda: svi.step(x, num_data=N)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = (torch.rand(B, D) < 0.3).float()
    hand = HandVAE()
    # One private parameter store for the whole run (the two Pyro paths use distinct names).
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        steps = {
            "hand-written PyTorch": hand_step(hand, torch.optim.Adam(hand.parameters(), lr=LR), x),
            "pyro_vae (fit's step)": pyro_vae_step(x),
            "Pyro SVI Trace_ELBO": pyro_svi_step(x),
        }
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.warmup):
            for f in steps.values():
                f()
        names = list(steps)
        for i in range(args.steps):
            for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order
                tic = time.perf_counter()
                steps[name]()
                times[name].append(time.perf_counter() - tic)
    base = statistics.median(times["hand-written PyTorch"])
    rows = []
    print(f"{'path':<24} {'median ms/step':>15} {'IQR ms':>15} {'ratio':>7}")
    for name, t in times.items():
        q = statistics.quantiles(t, n=4)
        med = statistics.median(t)
        rows.append(
            {
                "path": name,
                "median_ms": med * 1e3,
                "q1_ms": q[0] * 1e3,
                "q3_ms": q[2] * 1e3,
                "ratio": med / base,
            }
        )
        print(f"{name:<24} {med * 1e3:>15.3f} {f'{q[0] * 1e3:.2f}-{q[2] * 1e3:.2f}':>15} {med / base:>7.3f}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} interleaved steps each"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": args.steps, "threads": torch.get_num_threads(), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
