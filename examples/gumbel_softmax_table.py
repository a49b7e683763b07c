"""A scaled-down reproduction of the VAE rows of Jang, Gu & Poole (2017), Table 1, on the
bundled 8x8 digits (binarized) instead of 28x28 MNIST.

    python examples/gumbel_softmax_table.py [--epochs 100] [--out runs/gumbel-softmax-table]

Runs ``pyro-vae compare`` for the categorical VAE (20 variables x 10 categories) and the
Bernoulli VAE (200 units) with the same data, seed, optimizer and budget for every
estimator, and prints the held-out negative ELBO of each beside the paper's MNIST numbers
(which are for a different data set: compare the ordering, not the values). Each model's
directory holds its comparison table and figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from pyro_vae._io import atomic_write_json, atomic_write_text
from pyro_vae.compare import CompareConfig, compare_run

# Jang et al. (2017), Table 1, VAE rows: negative ELBO (nats) on binarized MNIST.
PAPER = {
    "bernoulli": {"score": 112.2, "st-gumbel": 111.5, "gumbel": 105.0},
    "categorical": {"score": 110.6, "st-gumbel": 107.8, "gumbel": 101.5},
}
ESTIMATORS = ("score", "score-avg", "nvil", "vimco", "st-gumbel", "gumbel")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--grad-samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/gumbel-softmax-table"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    rows = []
    for model in ("categorical", "bernoulli"):
        config = dataclasses.replace(
            CompareConfig(),
            model=model,
            estimators=ESTIMATORS,
            epochs=args.epochs,
            gradient_samples=args.grad_samples,
            seed=args.seed,
        )
        result = compare_run(config, args.out / model, progress=not args.quiet)
        for r in result.results:
            rows.append(
                {
                    "model": model,
                    "estimator": r.name,
                    "neg_elbo": -r.val_elbo,
                    "neg_elbo_se": r.val_elbo_se,
                    "paper_mnist": PAPER[model].get(r.name, math.nan),
                    "guide_grad_variance": r.gradients["guide"].variance,
                }
            )
    lines = [
        f"held-out negative ELBO (nats), digits, {args.epochs} epochs; "
        "paper: MNIST, Jang et al. 2017 Table 1",
        f"{'model':<12} {'estimator':<10} {'ours (digits)':>16} {'paper (MNIST)':>14} "
        f"{'encoder grad var':>17}",
    ]
    for r in rows:
        paper = "" if math.isnan(r["paper_mnist"]) else f"{r['paper_mnist']:.1f}"
        lines.append(
            f"{r['model']:<12} {r['estimator']:<10} {r['neg_elbo']:>9.3f} ± {r['neg_elbo_se']:.3f} "
            f"{paper:>14} {r['guide_grad_variance']:>17.3g}"
        )
    print("\n".join(lines))
    atomic_write_text(args.out / "table.txt", "\n".join(lines) + "\n")
    atomic_write_json(args.out / "table.json", rows)


if __name__ == "__main__":
    main()
