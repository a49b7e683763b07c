"""Train a VAE on the bundled 8x8 digits and print held-out ELBO, rate and distortion.

    python examples/train_digits.py [--epochs 100] [--out runs/example-digits]

A thin script over the library: the same run as ``pyro-vae train`` with defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pyro_vae.commands.train import TrainConfig, format_summary, train_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--latent-dim", type=int, default=TrainConfig().latent_dim)
    parser.add_argument("--out", type=Path, default=Path("runs/example-digits"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    config = dataclasses.replace(TrainConfig(), epochs=args.epochs, latent_dim=args.latent_dim)
    run = train_run(config, args.out, progress=not args.quiet)
    print(format_summary(run.summary))
    print(f"figures and metrics in {run.run_dir}")


if __name__ == "__main__":
    main()
