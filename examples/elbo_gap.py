"""Train a VAE on the bundled digits, then print its likelihood bounds and gaps and save
the bound-against-K figure.

    python examples/elbo_gap.py [--epochs 100] [--out runs/example-elbo-gap]

A thin script over the library: ``pyro-vae train`` followed by ``pyro-vae evaluate``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pyro_vae.commands.evaluate import EvaluateConfig, evaluate_run, format_evaluation
from pyro_vae.commands.train import TrainConfig, train_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--max-k", type=int, default=5000, help="largest K (gives log p(x))")
    parser.add_argument("--num-points", type=int, default=EvaluateConfig().num_points)
    parser.add_argument("--out", type=Path, default=Path("runs/example-elbo-gap"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    run = train_run(dataclasses.replace(TrainConfig(), epochs=args.epochs), args.out, progress=not args.quiet)
    ks = (*(k for k in (1, 5, 50, 500, 5000) if k < args.max_k), args.max_k)
    config = EvaluateConfig(ks=ks, num_points=args.num_points)
    results = evaluate_run(run.run_dir, config, progress=not args.quiet)
    print(format_evaluation(results))
    print(f"bound against K: {run.run_dir / 'bounds_vs_k.png'}")


if __name__ == "__main__":
    main()
