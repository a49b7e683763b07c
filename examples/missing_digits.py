"""Train a VAE on digits with half of every image missing, then impute the missing pixels of
held-out images and save a figure: observed half, imputations, posterior-predictive mean, truth.

    python examples/missing_digits.py [--pattern random|bottom] [--epochs 200] [--out DIR]

A thin script over the library: :class:`~pyro_vae.models.MaskedVAE` trained by
:func:`~pyro_vae.train.fit` on ``(x, mask)``, :func:`~pyro_vae.bounds.elbo` of the observed
pixels, and :func:`~pyro_vae.imputation.impute` (self-normalized importance sampling with the
encoder as proposal). The imputation is scored on the hidden pixels against the truth, beside
a baseline that imputes each pixel's frequency among the observed training pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pyro_vae._io import atomic_write_json
from pyro_vae._stats import mean_and_se
from pyro_vae.bounds import elbo
from pyro_vae.data import load_digits, split
from pyro_vae.data.missing import bottom_half_mask, random_half_mask
from pyro_vae.imputation import impute
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import MaskedVAE
from pyro_vae.plotting import plot_imputations
from pyro_vae.train import fit


def _mask(pattern: str, x: torch.Tensor, image_shape: tuple[int, int], seed: int) -> torch.Tensor:
    if pattern == "bottom":
        return bottom_half_mask(x.shape[0], image_shape, dtype=x.dtype)
    return random_half_mask(x.shape[0], x.shape[1], seed=seed, dtype=x.dtype)


def _scores(p: torch.Tensor, x: torch.Tensor, hidden: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy (nats per hidden pixel) and accuracy of imputed probabilities ``p``."""
    p = p.clamp(1e-6, 1 - 1e-6)
    nll = -(x * p.log() + (1 - x) * (1 - p).log())
    accuracy = ((p > 0.5).to(x.dtype) == x).to(x.dtype)
    return nll[hidden].mean().item(), accuracy[hidden].mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pattern", choices=["random", "bottom"], default="random", help="which half is hidden"
    )
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--particles", type=int, default=1000, help="importance samples per image")
    parser.add_argument("--samples", type=int, default=100, help="imputations drawn per image")
    parser.add_argument("--num-test", type=int, default=180, help="held-out images imputed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/example-missing-digits"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    data = load_digits(binarize=True, seed=args.seed)
    parts = split(data, val_fraction=0.1, test_fraction=0.1, seed=args.seed)
    shape = data.image_shape
    x_train, x_val, x_test = parts.train.x, parts.val.x, parts.test.x[: args.num_test]
    m_train, m_val, m_test = (
        _mask(args.pattern, x, shape, args.seed + i) for i, x in enumerate((x_train, x_val, x_test))
    )

    vae = MaskedVAE(Bernoulli(x_train.shape[1]), latent_dim=args.latent_dim, hidden=(args.hidden,))
    vae.validate_data(x_train, m_train)
    fit(
        vae.model,
        vae.guide,
        (x_train * m_train, m_train),  # the missing pixels are never seen, even in training
        validation=(x_val * m_val, m_val),
        epochs=args.epochs,
        batch_size=64,
        lr=1e-3,
        seed=args.seed,
        progress=not args.quiet,
    )
    observed_test = x_test * m_test
    test_elbo, test_elbo_se = mean_and_se(elbo(vae.model, vae.guide, observed_test, m_test, num_particles=10))
    result = impute(
        vae.model, vae.guide, observed_test, m_test, num_samples=args.samples, num_particles=args.particles
    )
    hidden = m_test < 0.5
    nll, accuracy = _scores(result.mean, x_test, hidden)
    frequency = (x_train * m_train).sum(0) / m_train.sum(0).clamp(min=1)  # observed training pixels only
    base_nll, base_accuracy = _scores(frequency.expand_as(x_test), x_test, hidden)
    draw_accuracy = (result.samples == x_test).to(x_test.dtype)[:, hidden].mean().item()
    summary = {
        "pattern": args.pattern,
        "epochs": args.epochs,
        "num_test": x_test.shape[0],
        "particles": args.particles,
        "test_elbo_observed": test_elbo,
        "test_elbo_observed_se": test_elbo_se,
        "imputation_nats_per_hidden_pixel": nll,
        "imputation_accuracy": accuracy,
        "draw_accuracy": draw_accuracy,
        "baseline_nats_per_hidden_pixel": base_nll,
        "baseline_accuracy": base_accuracy,
        "ess_median": result.ess.median().item(),
        "ess_min": result.ess.min().item(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "imputation.json", summary)
    figure = plot_imputations(
        x_test[:10],
        m_test[:10],
        result.samples[:, :10],
        result.mean[:10],
        args.out / "imputations.png",
        shape,
    )
    print(f"test ELBO of the observed pixels: {test_elbo:.3f} ± {test_elbo_se:.3f} nats per image")
    print(f"{'hidden pixels':<28} {'nats/pixel':>10} {'accuracy':>9}")
    print(f"{'imputation (SNIS mean)':<28} {nll:>10.3f} {accuracy:>9.3f}")
    print(f"{'pixel frequency baseline':<28} {base_nll:>10.3f} {base_accuracy:>9.3f}")
    print(f"accuracy of single imputation draws: {draw_accuracy:.3f}")
    print(
        f"ESS of the weights ({args.particles} particles): "
        f"median {summary['ess_median']:.1f}, min {summary['ess_min']:.1f}"
    )
    print(f"figure: {figure}")


if __name__ == "__main__":
    main()
