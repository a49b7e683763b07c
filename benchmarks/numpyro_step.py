r"""Time one training step: NumPyro's jitted SVI step beside the hand-written PyTorch step and
pyro_vae's default (fit's) step, on the same VAE.

The network is train_step.py's: a 784-400-(50 loc + 50 softplus scale + 1e-5) encoder, a
50-400-784 decoder, ReLU, a Bernoulli(logits) likelihood, a standard normal prior, a batch of
128 scaled to N = 60000, Adam at 1e-3, float32 on the CPU. The NumPyro side is plain
``numpyro.param`` arrays with jax.numpy dense layers (no flax or haiku), started from the same
initial weights as the hand-written PyTorch model, trained by ``numpyro.infer.SVI`` with
``TraceMeanField_ELBO`` (analytic KL, like pyro_vae's default ``MeanFieldELBO``) and
``numpyro.optim.Adam(1e-3)``; its timed step is ``svi_state, loss = update(svi_state, x)``
with ``update = jax.jit(svi.update)``, waited for with ``jax.block_until_ready``. The first
call (tracing and XLA compilation) happens before the timing and is reported apart as
``compile_s``. Steps of every path are interleaved in one process so that machine noise hits
all alike; we report medians and their ratio to the hand-written PyTorch step (for-loop Adam).

JAX and NumPyro are NOT dependencies of pyro_vae: install them only in a separate venv for this
comparison (without them the script prints ``{"skipped": ...}`` and exits 0). From the
repository root::

    python3 -m venv /tmp/speed-venv && . /tmp/speed-venv/bin/activate \
        && pip install torch==2.13.0 && pip install -e . jax numpyro \
        && python benchmarks/numpyro_step.py

    python benchmarks/numpyro_step.py [--steps 300] [--warmup 30] [--quick] [--threads N]
        [--separate ROUNDS] [--json out.json]

Threads: ``--threads`` sets torch's (``torch.set_num_threads``). XLA's CPU backend keeps its own
thread pool, which this script does not change: ``XLA_FLAGS`` is recorded in the environment
as found (``--xla_cpu_multi_thread_eigen=false`` and ``intra_op_parallelism_threads=1`` are
accepted by jax 0.10 but did not change the threads it starts, so neither is set here).

The minibatch scaling is ``numpyro.handlers.scale(N / B)`` around ``numpyro.plate("data", B)``
rather than ``plate("data", N, subsample_size=B)``: the latter would also draw 128 random
indices out of 60000 every step (a scan over a 60000-long array on the CPU), work that neither
torch path does. The same scale is on the model and the guide, so the KL term is scaled too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch
from _common import emit, environment, interleave, other_matmul, ratio_table, set_threads
from train_step import LR, B, D, H, HandVAE, K, N, hand_step, pyro_vae_step

from pyro_vae.infer import MeanFieldELBO
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train.step import COMPILE_STEPS

BASELINE = "hand-written PyTorch"
NUMPYRO = "NumPyro jitted SVI"
SKIP_REASON = (
    "needs jax and numpyro (not dependencies of pyro_vae): pip install jax numpyro in a separate venv"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="60 steps, 10 warm-up (for run_all.py)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's); XLA keeps its own"
    )
    parser.add_argument(
        "--separate",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="time every path alone in a process of its own instead, ROUNDS rounds of one process "
        "per path in alternating order (no thread pool competes with another)",
    )
    # one path: --separate's worker. Not "--only": TorchInductor takes the argument after an
    # "--only" in sys.argv as its benchmark's name and writes it unescaped into the Python
    # of the graphs it compiles (a path name with an apostrophe broke the compiled step)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--json", default=None, help="also write the results as JSON to this file ('-': stdout)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 60, 10
    return args


def have_numpyro() -> bool:
    try:
        import jax  # noqa: F401
        import numpyro  # noqa: F401
    except ImportError:
        return False
    return True


def torch_weights(model: HandVAE) -> dict[str, Any]:
    """``model``'s layers as float32 numpy arrays for ``x @ w + b`` (torch keeps ``w`` transposed)."""
    layers = {"enc1": model.enc[0], "enc2": model.enc[2], "dec1": model.dec[0], "dec2": model.dec[2]}
    weights = {}
    for name, layer in layers.items():
        weights[f"{name}_w"] = layer.weight.detach().numpy().T.copy()
        weights[f"{name}_b"] = layer.bias.detach().numpy().copy()
    return weights


def numpyro_model_guide(init: dict[str, Any]) -> tuple[Callable, Callable]:
    """The VAE in NumPyro, its parameters plain ``numpyro.param`` arrays started at ``init``."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def params(prefix: str) -> dict[str, Any]:
        return {k: numpyro.param(k, jnp.asarray(v)) for k, v in init.items() if k.startswith(prefix)}

    def mlp(p: dict[str, Any], prefix: str, h: Any) -> Any:
        h = jax.nn.relu(h @ p[f"{prefix}1_w"] + p[f"{prefix}1_b"])
        return h @ p[f"{prefix}2_w"] + p[f"{prefix}2_b"]

    def model(x: Any) -> None:
        p = params("dec")
        with numpyro.handlers.scale(scale=N / x.shape[0]), numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(K, jnp.float32), 1.0).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=mlp(p, "dec", z)).to_event(1), obs=x)

    def guide(x: Any) -> None:
        p = params("enc")
        with numpyro.handlers.scale(scale=N / x.shape[0]), numpyro.plate("data", x.shape[0]):
            out = mlp(p, "enc", x)
            loc, scale = out[..., :K], jax.nn.softplus(out[..., K:]) + 1e-5
            numpyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide


def numpyro_step(x: torch.Tensor, init: dict[str, Any]) -> tuple[Callable[[], None], float, float]:
    """NumPyro's SVI step, compiled: ``(step, compile_s, first_loss)``; ``compile_s`` is the
    first call of the jitted update (tracing, XLA compilation and one step)."""
    import jax
    import numpyro
    from numpyro.infer import SVI, TraceMeanField_ELBO

    model, guide = numpyro_model_guide(init)
    svi = SVI(model, guide, numpyro.optim.Adam(LR), TraceMeanField_ELBO())
    xj = jax.device_put(x.numpy())
    state = svi.init(jax.random.PRNGKey(0), xj)
    update = jax.jit(svi.update)
    tic = time.perf_counter()
    state, loss = jax.block_until_ready(update(state, xj))
    compile_s = time.perf_counter() - tic
    holder = [state]

    def step() -> None:
        holder[0], loss = update(holder[0], xj)
        jax.block_until_ready((holder[0], loss))

    return step, compile_s, float(loss)


def pyro_vae_initial_loss(x: torch.Tensor) -> float:
    """pyro_vae's loss at a fresh initialization (its own init, not the hand model's weights)."""
    vae = VAE(Bernoulli(D), latent_dim=K, hidden=(H,), name="initial")
    return float(MeanFieldELBO().loss(vae.model, vae.guide, x, num_data=N))


OTHER_MATMUL = other_matmul()
"""The kernels fit's default (``matmul="auto"``) does not pick on this machine, timed beside it."""
OTHER = f"pyro_vae, matmul={OTHER_MATMUL!r}"
LONG = f"pyro_vae (fit's step, run of {COMPILE_STEPS:,} steps)"
PATHS = (BASELINE, "hand-written, fused Adam", "pyro_vae (fit's step)", LONG, OTHER, NUMPYRO)


def build_steps(
    x: torch.Tensor, names: tuple[str, ...] = PATHS
) -> tuple[dict[str, Callable[[], None]], float, dict[str, float]]:
    """The paths ``names`` (all six by default; fit's step on a run of ``COMPILE_STEPS`` steps,
    compiled, and the kernels the default does not pick here among them), the NumPyro
    compile time (NaN without it) and the loss of each at initialization."""
    hand, hand_fused = HandVAE(), HandVAE()  # created in this order whichever paths run: same weights
    with torch.no_grad():
        initial = {BASELINE: float(hand.loss(x))}
    steps: dict[str, Callable[[], None]] = {}
    compile_s = float("nan")
    for name in names:
        if name == BASELINE:
            steps[name] = hand_step(hand, torch.optim.Adam(hand.parameters(), lr=LR), x)
        elif name == "hand-written, fused Adam":
            steps[name] = hand_step(
                hand_fused, torch.optim.Adam(hand_fused.parameters(), lr=LR, fused=True), x
            )
        elif name == "pyro_vae (fit's step)":
            initial[name] = pyro_vae_initial_loss(x)
            steps[name] = pyro_vae_step(x)
        elif name == LONG:  # compiled (where a C++ compiler is found), as fit runs a run that long
            initial[name] = pyro_vae_initial_loss(x)
            steps[name] = pyro_vae_step(x, name="long", planned=COMPILE_STEPS)
        elif name == OTHER:
            initial[name] = pyro_vae_initial_loss(x)
            steps[name] = pyro_vae_step(x, name="other", matmul=OTHER_MATMUL)
        elif name == NUMPYRO:
            steps[name], compile_s, initial[NUMPYRO] = numpyro_step(x, torch_weights(hand))
        else:
            raise ValueError(f"no path {name!r}; the paths are {PATHS}")
    return steps, compile_s, initial


def numpyro_environment() -> dict:
    import jax
    import numpyro

    env = environment()
    env.update(
        jax=jax.__version__,
        numpyro=numpyro.__version__,
        jax_backend=jax.default_backend(),
        xla_flags=os.environ.get("XLA_FLAGS"),
    )
    return env


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not have_numpyro():
        result = {"benchmark": "numpyro_step", "skipped": SKIP_REASON}
        if args.json != "-":
            print(SKIP_REASON)
        emit(result, args.json)
        return result
    if args.separate:
        return separate(args)
    set_threads(args.threads)
    torch.manual_seed(0)
    x = (torch.rand(B, D) < 0.3).float()
    # One private parameter store for the whole run (the Pyro paths use distinct names).
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        steps, compile_s, initial = build_steps(x, (args.path,) if args.path else PATHS)
        times = interleave(steps, steps=args.steps, warmup=args.warmup)
    if args.path:
        result = {"path": args.path, "median_s": statistics.median(times[args.path])}
        emit(result, args.json)
        return result
    rows = ratio_table(times, BASELINE)
    env = numpyro_environment()
    print(
        f"torch {env['torch']}, jax {env['jax']}, numpyro {env['numpyro']}, "
        f"{env['torch_threads']} torch threads (XLA: its own pool, XLA_FLAGS={env['xla_flags']}), "
        f"{args.steps} interleaved steps each, load {env['loadavg']}"
    )
    print(f"NumPyro compile (first jitted call): {compile_s:.2f} s")
    print("loss at initialization: " + ", ".join(f"{k} {v:.4g}" for k, v in initial.items()))
    result = {
        "benchmark": "numpyro_step",
        "steps": args.steps,
        "environment": env,
        "ratios": {r["path"]: r["ratio"] for r in rows},
        "results": rows,
        "compile_s": compile_s,
        "initial_loss": initial,
    }
    emit(result, args.json)
    return result


def separate(args: argparse.Namespace) -> dict:
    """Every path alone in a process of its own (``--path``), ``args.separate`` rounds, the order
    of the processes reversed every other round: the issue's way of comparing with NumPyro,
    where XLA's thread pool and torch's threads never share the machine."""
    medians: dict[str, list[float]] = {name: [] for name in PATHS}
    for r in range(args.separate):
        for name in PATHS if r % 2 == 0 else PATHS[::-1]:
            command = [sys.executable, __file__, "--path", name, "--steps", str(args.steps)]
            command += ["--warmup", str(args.warmup), "--json", "-"]
            if args.threads is not None:
                command += ["--threads", str(args.threads)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            medians[name].append(json.loads(out.strip().splitlines()[-1])["median_s"])
    base = statistics.median(medians[BASELINE])
    env = numpyro_environment()
    print(
        f"each path alone in its own process, {args.separate} rounds of {args.steps} steps, "
        f"load {env['loadavg']}"
    )
    print(f"{'path':<28} {'median ms/step':>15} {'per round (ms)':>28} {'ratio':>7}")
    rows = []
    for name, values in medians.items():
        med = statistics.median(values)
        per_round = ", ".join(f"{v * 1e3:.2f}" for v in values)
        rows.append(
            {
                "path": name,
                "median_ms": med * 1e3,
                "rounds_ms": [v * 1e3 for v in values],
                "ratio": med / base,
            }
        )
        print(f"{name:<28} {med * 1e3:>15.3f} {per_round:>28} {med / base:>7.3f}")
    result = {
        "benchmark": "numpyro_step",
        "mode": "separate processes",
        "steps": args.steps,
        "rounds": args.separate,
        "environment": env,
        "ratios": {r["path"]: r["ratio"] for r in rows},
        "results": rows,
    }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
