"""Time one training step of the discrete-latent estimators against hand-written PyTorch.

The categorical VAE of Jang et al. (2017): 784-512-256-(20x10) encoder, (20x10)-256-512-784
decoder, ReLU, Bernoulli likelihood, uniform prior, batch 100, the same Adam. For each
estimator the hand-written PyTorch step computes the same objective and gradient (VIMCO
with K particles and leave-one-out control variates; Gumbel-softmax with the analytic
categorical KL; REINFORCE without baseline). Steps are interleaved in one process so that
machine noise hits all paths alike; we report medians and ratios.

    python benchmarks/estimator_step.py [--steps 200] [--particles 5] [--quick] [--threads N]
        [--no-long] [--json out.json]

The "long run" rows are fit's step on a run of ``COMPILE_STEPS`` (50,000) steps or more:
compiled by TorchInductor where a C++ compiler is found, a few seconds each before the timing.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable

import pyro
import torch
from _common import emit, environment, interleave, other_matmul, set_threads
from pyro.infer import Trace_ELBO
from torch import nn
from torch.distributions import OneHotCategorical
from torch.nn import functional as F

from pyro_vae.estimators import VIMCO, RelaxedELBO, ScoreFunctionELBO, leave_one_out_bounds
from pyro_vae.infer.onednn_matmul import onednn_available, resolve_matmul
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import CategoricalLatent, DiscreteVAE
from pyro_vae.networks import mlp
from pyro_vae.train import train_step
from pyro_vae.train.optimizers import default_optimizer
from pyro_vae.train.step import COMPILE_STEPS, FIT_CAPTURE_AFTER, resolve_compile, step_loss

D, HIDDEN, L, C, B, N, LR, TAU = 784, (512, 256), 20, 10, 100, 60000, 1e-3, 0.5
LONG = "long run"
"""The path of fit's step on a run of ``COMPILE_STEPS`` steps or more (compiled)."""


class HandCategoricalVAE(nn.Module):
    """The reference: the same networks, each estimator written out in PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = mlp(D, HIDDEN, L * C)
        self.dec = mlp(L * C, tuple(reversed(HIDDEN)), D)

    def _terms(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(
            self.dec(z.flatten(-2)), x.expand(*z.shape[:-2], D), reduction="none"
        ).sum(-1)

    def vimco(self, x: torch.Tensor, k: int) -> torch.Tensor:
        q = OneHotCategorical(logits=self.enc(x).view(-1, L, C))
        z = q.sample((k,))
        log_q = q.log_prob(z).sum(-1)
        log_w = self._terms(x, z) - L * math.log(C) - log_q
        bound = log_w.logsumexp(0) - math.log(k)
        signal = bound.detach() - leave_one_out_bounds(log_w.detach())
        return -(bound + (signal * log_q).sum(0)).sum() * (N / x.shape[0])

    def gumbel(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.enc(x).view(-1, L, C)
        y = F.gumbel_softmax(logits, tau=TAU)
        log_q = logits.log_softmax(-1)
        kl = (log_q.exp() * (log_q + math.log(C))).sum((-2, -1))
        return -(self._terms(x, y) - kl).sum() * (N / x.shape[0])

    def reinforce(self, x: torch.Tensor) -> torch.Tensor:
        q = OneHotCategorical(logits=self.enc(x).view(-1, L, C))
        z = q.sample()
        log_q = q.log_prob(z).sum(-1)
        log_w = self._terms(x, z) - L * math.log(C) - log_q.detach()
        return -(log_w + log_w.detach() * log_q).sum() * (N / x.shape[0])


def hand_step(loss: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> Callable[[], None]:
    opt = torch.optim.Adam(params, lr=LR)

    def step() -> None:
        loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def pyro_vae_step(
    x: torch.Tensor, loss: object, name: str, *, matmul: str = "auto", planned: int = 1000
) -> Callable[[], None]:
    """The step :func:`pyro_vae.train.fit` runs by default with ``loss``: its optimizer and its
    step loss (captured once the structure has run ``FIT_CAPTURE_AFTER`` times, for the losses
    that allow it; Pyro's ``Trace_ELBO`` stays eager), its products on the machine's kernels
    (``matmul="auto"``); with ``matmul="aten"`` or ``"onednn"`` the captured graph's products on
    PyTorch's or oneDNN's kernels; with ``planned`` steps of at least
    :data:`~pyro_vae.train.step.COMPILE_STEPS`, the step fit runs on a run that long (compiled
    at capture here, where a C++ compiler is found: fit compiles it after
    ``FIT_COMPILE_AFTER`` runs, the same graph)."""
    vae = DiscreteVAE(Bernoulli(D), CategoricalLatent(L, C), hidden=HIDDEN, name=name)
    kwargs = {"num_data": N}
    loss.loss(vae.model, vae.guide, x, **kwargs)  # type: ignore[attr-defined]
    params = [p for n, p in pyro.get_param_store().named_parameters() if n.startswith(f"{name}_")]
    opt = default_optimizer(params, lr=LR)  # fit's default
    compiled = resolve_compile(None, steps=planned, capture_after=FIT_CAPTURE_AFTER, distributed=False)
    step = step_loss(loss, matmul=matmul, compile=compiled)
    if step is not loss:
        for _ in range(FIT_CAPTURE_AFTER + 1):  # the eager steps, then the capture
            train_step(step, opt, vae.model, vae.guide, (x,), kwargs)
        if not step.captured_steps:
            raise RuntimeError(f"the step was not captured: {step.fallback_reason}")
        if compiled and not step.compiled:
            raise RuntimeError(f"the step was not compiled: {step.compile_note}")
        if compiled and step.compile_note:  # compiled, not on the kernels asked for
            print(f"{name}: {step.compile_note}")
    return lambda: train_step(step, opt, vae.model, vae.guide, (x,), kwargs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--particles", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="40 steps, 5 warm-up (for run_all.py)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--long",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"also time fit's step on a run of {COMPILE_STEPS:,} steps (compiled where a C++ compiler "
        "is found; seconds of compiling each); default: yes, but not with --quick",
    )
    parser.add_argument(
        "--json", default=None, help="also write the results as JSON to this file ('-': stdout)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 40, 5
    if args.long is None:
        args.long = not args.quick
    set_threads(args.threads)
    torch.manual_seed(0)
    x = (torch.rand(B, D) < 0.3).float()
    hand = HandCategoricalVAE()
    k = args.particles
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        paths = {
            ("VIMCO", "hand-written"): hand_step(lambda: hand.vimco(x, k), list(hand.parameters())),
            ("VIMCO", "pyro_vae"): pyro_vae_step(x, VIMCO(num_particles=k), "vimco"),
            ("Gumbel-softmax", "hand-written"): hand_step(lambda: hand.gumbel(x), list(hand.parameters())),
            ("Gumbel-softmax", "pyro_vae"): pyro_vae_step(x, RelaxedELBO(temperature=TAU), "gumbel"),
            ("REINFORCE", "hand-written"): hand_step(lambda: hand.reinforce(x), list(hand.parameters())),
            ("REINFORCE", "pyro_vae"): pyro_vae_step(x, ScoreFunctionELBO(), "score"),
            ("REINFORCE", "Pyro Trace_ELBO"): pyro_vae_step(x, Trace_ELBO(), "trace"),
        }
        if args.long:  # fit's default on a run of COMPILE_STEPS steps or more: compiled
            paths[("VIMCO", LONG)] = pyro_vae_step(x, VIMCO(num_particles=k), "vimco2", planned=COMPILE_STEPS)
            paths[("Gumbel-softmax", LONG)] = pyro_vae_step(
                x, RelaxedELBO(temperature=TAU), "gumbel2", planned=COMPILE_STEPS
            )
            paths[("REINFORCE", LONG)] = pyro_vae_step(
                x, ScoreFunctionELBO(), "score2", planned=COMPILE_STEPS
            )
        if onednn_available():  # the kernels the default did not pick, for comparison
            other = other_matmul()
            name = f"matmul={other!r}"
            paths[("VIMCO", name)] = pyro_vae_step(x, VIMCO(num_particles=k), "vimco1", matmul=other)
            paths[("Gumbel-softmax", name)] = pyro_vae_step(
                x, RelaxedELBO(temperature=TAU), "gumbel1", matmul=other
            )
            paths[("REINFORCE", name)] = pyro_vae_step(x, ScoreFunctionELBO(), "score1", matmul=other)
        times = interleave(paths, steps=args.steps, warmup=args.warmup)
    rows = []
    print(f"{'estimator':<16} {'path':<17} {'median ms/step':>15} {'IQR ms':>15} {'ratio':>7}")
    for (estimator, path), t in times.items():
        base = statistics.median(times[(estimator, "hand-written")])
        q = statistics.quantiles(t, n=4)
        med = statistics.median(t)
        rows.append(
            {
                "estimator": estimator,
                "path": path,
                "median_ms": med * 1e3,
                "q1_ms": q[0] * 1e3,
                "q3_ms": q[2] * 1e3,
                "ratio": med / base,
            }
        )
        iqr = f"{q[0] * 1e3:.2f}-{q[2] * 1e3:.2f}"
        print(f"{estimator:<16} {path:<17} {med * 1e3:>15.3f} {iqr:>15} {med / base:>7.3f}")
    env = environment()
    print(
        f"torch {torch.__version__}, {env['torch_threads']} threads, K={k}, "
        f"{args.steps} interleaved steps each, matmul='auto' is {resolve_matmul('auto')!r} here, "
        f"load {env['loadavg']}"
    )
    result = {
        "benchmark": "estimator_step",
        "steps": args.steps,
        "particles": k,
        "matmul": resolve_matmul("auto"),
        "environment": env,
        "ratios": {f"{r['estimator']} {r['path']}": r["ratio"] for r in rows if r["path"] != "hand-written"},
        "results": rows,
    }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
