"""pyro_vae's scVI model beside scvi-tools' SCVI: held-out marginal log-likelihood and wall time.

The same real counts (default: the committed 559 cells x 300 genes of
``tests/data/files/celltypist_counts.h5ad``, layer ``counts``), the same split (90% train, 10%
test, by ``--seed``), the same model size (one hidden layer of 128, ``--latent`` dimensions,
ZINB with gene-wise dispersion, observed library size), the same optimizer budget (Adam at
1e-3, ``--epochs`` epochs of minibatches of 128, no KL warm-up), and the same estimator of the
held-out :math:`\\log p(x)`: the importance-weighted bound :math:`\\mathcal L_K` with ``--particles``
samples from the encoder, ours with ``pyro_vae.bounds.log_marginal``, theirs with
``SCVI.get_marginal_ll`` (both in nats per cell; higher is better).

scvi-tools is not a dependency: it runs in its own Python given by ``--scvi-python`` (a venv with
``pip install torch==2.13.0 scvi-tools``), as a child process of this script, interleaved with
our runs; both use one thread. Medians over ``--repeats`` seeds are printed with the load
average. Run from the repository root::

    python benchmarks/scvi_compare.py --scvi-python /tmp/scvi-venv/bin/python

Known differences that remain: scvi-tools' networks have batch normalization and dropout 0.1,
and weight decay 1e-6 with Adam's eps 0.01 (its defaults); ours have neither.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).parents[1] / "tests" / "data" / "files" / "celltypist_counts.h5ad"


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    test = n // 10
    return np.sort(order[test:]), np.sort(order[:test])


def ours(args: argparse.Namespace, seed: int) -> dict:
    import pyro
    import torch

    from pyro_vae.bounds import log_marginal
    from pyro_vae.data.h5ad import load_h5ad
    from pyro_vae.likelihoods import ZINB
    from pyro_vae.models import ScVI
    from pyro_vae.train import fit

    torch.set_num_threads(1)
    data = load_h5ad(args.data, layer=args.layer)
    train, test = split(len(data), seed)
    x_train, x_test = data.x[train], data.x[test]
    pyro.clear_param_store()
    torch.manual_seed(seed)
    model = ScVI(ZINB(data.num_features), latent_dim=args.latent, hidden=(128,))
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo: not timed
    tic = time.perf_counter()
    options = {"epochs": args.epochs, "batch_size": 128, "lr": 1e-3, "seed": seed, "progress": False}
    fit(model.model, model.guide, x_train, **options)
    seconds = time.perf_counter() - tic
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        ll = log_marginal(model.model, model.guide, x_test, num_particles=args.particles)
    return {"who": "pyro_vae", "seed": seed, "train_seconds": seconds, "log_marginal": ll.value.mean().item()}


def theirs(args: argparse.Namespace, seed: int) -> dict:
    import anndata
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.seed = seed
    scvi.settings.num_threads = 1
    scvi.settings.dl_num_workers = 0
    adata = anndata.read_h5ad(args.data)
    train, test = split(adata.n_obs, seed)
    a_train, a_test = adata[train].copy(), adata[test].copy()
    scvi.model.SCVI.setup_anndata(a_train, layer=args.layer)
    model = scvi.model.SCVI(a_train, n_latent=args.latent, n_hidden=128, n_layers=1, gene_likelihood="zinb")
    tic = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        batch_size=128,
        train_size=1.0,
        early_stopping=False,
        accelerator="cpu",
        enable_progress_bar=False,
        plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": None, "n_steps_kl_warmup": None},
    )
    seconds = time.perf_counter() - tic
    ll = model.get_marginal_ll(a_test, n_mc_samples=args.particles, return_mean=True)
    return {"who": "scvi-tools", "seed": seed, "train_seconds": seconds, "log_marginal": float(ll)}


def _child(args: argparse.Namespace, seed: int) -> dict:
    cmd = [args.scvi_python, __file__, "--child", str(seed), "--data", str(args.data), "--layer", args.layer]
    cmd += ["--epochs", str(args.epochs), "--latent", str(args.latent), "--particles", str(args.particles)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise SystemExit(f"scvi-tools run failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--layer", default="counts")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--latent", type=int, default=10)
    parser.add_argument("--particles", type=int, default=1000, help="K of the held-out L_K")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--scvi-python",
        default=os.environ.get("PYRO_VAE_SCVI_PYTHON"),
        help="a Python with scvi-tools installed (default: $PYRO_VAE_SCVI_PYTHON)",
    )
    parser.add_argument(
        "--json",
        "--out",
        dest="json",
        default=None,
        help="the runs as JSON to this file (-: stdout's last line)",
    )
    parser.add_argument("--quick", action="store_true", help="5 epochs, K = 100, one seed")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.particles, args.repeats = 5, 100, 1
    if args.child is not None:
        print(json.dumps(theirs(args, args.child)))
        return
    print(f"{args.data}: {args.epochs} epochs, latent {args.latent}, K = {args.particles}")
    runs = []
    for seed in range(args.repeats):
        load = os.getloadavg()
        runs.append(ours(args, seed) | {"load": load})
        if args.scvi_python:
            runs.append(_child(args, seed) | {"load": load})
        for r in runs[-2 if args.scvi_python else -1 :]:
            ll, seconds = r["log_marginal"], r["train_seconds"]
            print(f"  seed {seed} {r['who']:>10}: log p(x) {ll:9.2f}  {seconds:6.1f} s")
    print(f"medians of {args.repeats} runs (load average {os.getloadavg()}):")
    training: dict[str, float] = {}  # median training seconds, by who ran
    for who in ("pyro_vae", "scvi-tools"):
        mine = [r for r in runs if r["who"] == who]
        if mine:
            ll = statistics.median(r["log_marginal"] for r in mine)
            training[who] = seconds = statistics.median(r["train_seconds"] for r in mine)
            print(f"  {who:>10}: held-out log p(x) {ll:9.2f} nats per cell, training {seconds:6.1f} s")
    from _common import emit, environment  # here: the child runs in scvi-tools' Python, without Pyro

    result: dict = {"runs": runs, "environment": environment()}
    if len(training) == 2:
        ratio = training["pyro_vae"] / training["scvi-tools"]
        result["ratios"] = {"training time, pyro_vae / scvi-tools": ratio}
    emit(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
