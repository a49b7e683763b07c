"""A scaled-down reproduction of the VAE rows of Jang, Gu & Poole (2017), Table 1, on the
bundled 8x8 digits (binarized) instead of 28x28 MNIST.

    python examples/gumbel_softmax_table.py [--epochs 100] [--seeds 0,1,2] [--out runs/gumbel-softmax-table]

For the categorical VAE (20 variables x 10 categories) and the Bernoulli VAE (200 units),
runs ``pyro-vae compare`` once per seed, with the same data, seed, optimizer and budget
for every estimator, and prints each estimator's held-out negative ELBO (mean over seeds)
and its paired difference from the score function, beside the paper's MNIST numbers
(a different data set: compare the ordering, not the values). Each run's directory
holds its comparison table and figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from pathlib import Path

from pyro_vae._io import atomic_write_json, atomic_write_text
from pyro_vae.commands.compare import CompareConfig, compare_run

# Jang et al. (2017), Table 1, VAE rows: negative ELBO (nats) on binarized MNIST.
PAPER = {
    "categorical": {"score": 110.6, "st-gumbel": 107.8, "gumbel": 101.5},
    "bernoulli": {"score": 112.2, "st-gumbel": 111.5, "gumbel": 105.0},
}
ESTIMATORS = {
    "categorical": ("score", "score-avg", "nvil", "vimco", "st-gumbel", "gumbel"),
    "bernoulli": ("score", "score-avg", "nvil", "vimco", "arm", "st-gumbel", "gumbel"),
}


def _mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.fmean(values), se


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--grad-samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/gumbel-softmax-table"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    rows = []
    for model in PAPER:
        per_seed: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ESTIMATORS[model]}
        for seed in seeds:
            config = dataclasses.replace(
                CompareConfig(),
                model=model,
                estimators=ESTIMATORS[model],
                epochs=args.epochs,
                gradient_samples=args.grad_samples,
                seed=seed,
            )
            result = compare_run(config, args.out / model / f"seed-{seed}", progress=not args.quiet)
            diffs = {r["estimator"]: r["val_elbo_vs_first"] for r in result.rows()}
            for r in result.results:
                per_seed[r.name].append((-r.val_elbo, -diffs[r.name], r.gradients["guide"].variance))
        for name, values in per_seed.items():
            neg_elbo, neg_elbo_se = _mean_se([v[0] for v in values])
            diff, diff_se = _mean_se([v[1] for v in values])
            rows.append(
                {
                    "model": model,
                    "estimator": name,
                    "neg_elbo": neg_elbo,
                    "neg_elbo_se_over_seeds": neg_elbo_se,
                    "minus_score": diff,
                    "minus_score_se_over_seeds": diff_se,
                    "per_seed": [v[0] for v in values],
                    "guide_grad_variance": statistics.fmean(v[2] for v in values),
                    "paper_mnist": PAPER[model].get(name, math.nan),
                }
            )
    lines = [
        f"held-out negative ELBO (nats), digits, {args.epochs} epochs, seeds {args.seeds} (mean ± SE over "
        "seeds); paper: MNIST, Jang et al. 2017 Table 1",
        f"{'model':<12} {'estimator':<10} {'-ELBO':>16} {'minus score':>16} {'paper (MNIST)':>14} "
        f"{'encoder grad var':>17}",
    ]
    for r in rows:
        paper = "" if math.isnan(r["paper_mnist"]) else f"{r['paper_mnist']:.1f}"
        lines.append(
            f"{r['model']:<12} {r['estimator']:<10} "
            f"{r['neg_elbo']:>8.3f} ± {r['neg_elbo_se_over_seeds']:.3f} "
            f"{r['minus_score']:>+8.3f} ± {r['minus_score_se_over_seeds']:.3f} {paper:>14} "
            f"{r['guide_grad_variance']:>17.3g}"
        )
    print("\n".join(lines))
    atomic_write_text(args.out / "table.txt", "\n".join(lines) + "\n")
    atomic_write_json(args.out / "table.json", rows)


if __name__ == "__main__":
    main()
