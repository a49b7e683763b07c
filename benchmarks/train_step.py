"""Time one training step: pyro_vae's default path against a hand-written PyTorch VAE.

Both are the same network (784-400-(50+50) encoder, 50-400-784 decoder, ReLU, softplus
scale, Bernoulli likelihood), batch 128, the same Adam. Steps are interleaved in one
process so that machine noise hits both alike; we report medians and their ratio. A last
row times the step's matrix multiplies and one fused Adam kernel alone (``floor_step``): how
close to the machine's limit any step can come. The row "fit's step, run of 50,000 steps" is
the step ``fit`` runs by default on a run that long: compiled by TorchInductor (where a C++
compiler is found; ``COMPILE_STEPS``), a few seconds of compiling before the timing starts.
``fit`` compiles a structure once it has run ``FIT_COMPILE_AFTER`` times; the row compiles it
at capture, the same graph, so that the timing starts without a thousand warm-up steps.

    python benchmarks/train_step.py [--steps 300] [--quick] [--threads N] [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pyro
import torch
from _common import emit, environment, interleave, other_matmul, ratio_table, set_threads
from torch import nn
from torch.nn import functional as F

from pyro_vae.infer import MeanFieldELBO
from pyro_vae.infer.onednn_matmul import onednn_available, onednn_linear, resolve_matmul
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import FusedAdam, train_step
from pyro_vae.train.optimizers import default_optimizer
from pyro_vae.train.step import COMPILE_STEPS, FIT_CAPTURE_AFTER, resolve_compile, step_loss

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


def pyro_vae_step(
    x: torch.Tensor,
    *,
    name: str = "pyro_vae",
    capture: bool = True,
    compile: bool = False,
    matmul: str = "auto",
    planned: int = 1000,
) -> Callable[[], None]:
    """The step :func:`pyro_vae.train.fit` runs by default: validation off, its default
    optimizer, and its step loss (:func:`~pyro_vae.train.step.step_loss`: the step captured and
    replayed once the structure has run ``FIT_CAPTURE_AFTER`` times eagerly); with
    ``capture=False``, ``fit(capture_after=None)``'s eager step; with ``compile=True`` the
    captured graph also compiled by TorchInductor (opt-in, a minute of compiling); its matrix
    products on the machine's kernels (``matmul="auto"``, fit's default), or on PyTorch's
    (``"aten"``) or oneDNN's (``"onednn"``); with
    ``planned`` steps of at least :data:`~pyro_vae.train.step.COMPILE_STEPS`, the step fit runs
    on a run that long (compiled, where a C++ compiler is found)."""
    vae = VAE(Bernoulli(D), latent_dim=K, hidden=(H,), name=name)
    loss = MeanFieldELBO()
    kwargs = {"num_data": N}
    loss.loss(vae.model, vae.guide, x, **kwargs)  # registers the parameters, as fit does
    prefix = f"{vae.name}_"
    params = [p for n, p in pyro.get_param_store().named_parameters() if n.startswith(prefix)]
    opt = default_optimizer(params, lr=LR)
    capture_after = FIT_CAPTURE_AFTER if capture else None
    # what fit decides for a run of `planned` steps (compile=None): compiled when long enough
    compiled = resolve_compile(
        True if compile else None,
        steps=planned,
        capture_after=capture_after,
        distributed=False,
    )
    step = step_loss(loss, capture_after=capture_after, matmul=matmul, compile=compiled)
    if capture:
        for _ in range(FIT_CAPTURE_AFTER + 1):  # the eager steps, then the capture
            train_step(step, opt, vae.model, vae.guide, (x,), kwargs)
        if not step.captured_steps:
            raise RuntimeError(f"the step was not captured: {step.fallback_reason}")
        if compiled and not step.compiled:
            raise RuntimeError(f"the step was not compiled: {step.compile_note}")
    return lambda: train_step(step, opt, vae.model, vae.guide, (x,), kwargs)


def floor_step(x: torch.Tensor, *, onednn: bool = False) -> Callable[[], None]:
    """The work no implementation of the step avoids, on tensors of the step's shapes: the
    forward's four matrix multiplies (with their biases), the backward's seven (each layer's
    weight gradient, and the input gradient of every layer but the first, whose input is the
    data) and one fused Adam kernel over the eight parameters. The elementwise work, the
    autograd engine and all Python are left out, so a step can approach this but not reach it.
    With ``onednn=True`` the products run on oneDNN's kernels, as ``matmul="onednn"`` runs them."""
    gen = torch.Generator().manual_seed(1)
    dims = [(D, H), (H, 2 * K), (K, H), (H, D)]  # (in, out) of encoder and decoder layers
    weights = [torch.randn(o, i, generator=gen) * 0.01 for i, o in dims]
    biases = [torch.zeros(o) for _, o in dims]
    hidden, latent = torch.rand(B, H, generator=gen), torch.randn(B, K, generator=gen)
    inputs = [x, hidden, latent, hidden.clone()]
    grads_out = [torch.randn(B, o, generator=gen) for _, o in dims]
    params = weights + biases
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros(()) for _ in params]

    def addmm(bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> None:
        if onednn:
            onednn_linear(a, b.t(), bias)
        elif bias is None:
            torch.mm(a, b)
        else:
            torch.addmm(bias, a, b)

    def step() -> None:
        for a, w, bias in zip(inputs, weights, biases, strict=True):
            addmm(bias, a, w.t())
        for layer, (a, w, g) in enumerate(zip(inputs, weights, grads_out, strict=True)):
            addmm(None, g.t(), a)  # the weight's gradient
            if layer:
                addmm(None, g, w)  # the input's gradient
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            amsgrad=False,
            lr=LR,
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.0,
            eps=1e-8,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    return step


def pyro_svi_step(x: torch.Tensor) -> Callable[[], None]:
    """Plain Pyro for context: SVI with Trace_ELBO and pyro.optim.Adam."""
    vae = VAE(Bernoulli(D), latent_dim=K, hidden=(H,), name="svi")
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), pyro.infer.Trace_ELBO())
    return lambda: svi.step(x, num_data=N)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="60 steps, 10 warm-up (for run_all.py)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time CapturedLoss(compile=True) (compiling takes a minute)",
    )
    parser.add_argument(
        "--json", default=None, help="also write the results as JSON to this file ('-': stdout)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 60, 10
    set_threads(args.threads)
    torch.manual_seed(0)
    x = (torch.rand(B, D) < 0.3).float()
    hand, hand_fused, hand_ours = HandVAE(), HandVAE(), HandVAE()
    # One private parameter store for the whole run (the Pyro paths use distinct names).
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        steps = {
            "hand-written PyTorch": hand_step(hand, torch.optim.Adam(hand.parameters(), lr=LR), x),
            "hand-written, fused Adam": hand_step(
                hand_fused, torch.optim.Adam(hand_fused.parameters(), lr=LR, fused=True), x
            ),
            "hand-written, pyro_vae's FusedAdam": hand_step(
                hand_ours, FusedAdam(hand_ours.parameters(), lr=LR), x
            ),
            "pyro_vae (fit's step)": pyro_vae_step(x),
            f"pyro_vae (fit's step, run of {COMPILE_STEPS:,} steps)": pyro_vae_step(
                x, name="long", planned=COMPILE_STEPS
            ),
            "pyro_vae eager (capture_after=None)": pyro_vae_step(x, name="eager", capture=False),
            "Pyro SVI Trace_ELBO": pyro_svi_step(x),
            "floor: matmuls + one Adam kernel": floor_step(x),
        }
        if onednn_available():  # the kernels the default did not pick, for comparison
            other = other_matmul()
            steps[f"pyro_vae, matmul={other!r}"] = pyro_vae_step(x, name="other", matmul=other)
            steps[f"pyro_vae, matmul={other!r}, run of {COMPILE_STEPS:,} steps"] = pyro_vae_step(
                x, name="long_other", matmul=other, planned=COMPILE_STEPS
            )
            steps["floor, oneDNN matmuls"] = floor_step(x, onednn=True)
        if args.compile:
            steps["pyro_vae captured + compiled"] = pyro_vae_step(
                x, name="compiled", capture=True, compile=True
            )
        times = interleave(steps, steps=args.steps, warmup=args.warmup)
    rows = ratio_table(times, "hand-written PyTorch")
    env = environment()
    print(
        f"torch {torch.__version__}, {env['torch_threads']} threads, {args.steps} interleaved steps each, "
        f"matmul='auto' is {resolve_matmul('auto')!r} here, load {env['loadavg']}"
    )
    result = {
        "benchmark": "train_step",
        "steps": args.steps,
        "matmul": resolve_matmul("auto"),
        "environment": env,
        "ratios": {r["path"]: r["ratio"] for r in rows},
        "results": rows,
    }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
