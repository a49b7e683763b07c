"""Semi-supervised learning with the M2 model (Kingma et al. 2014) on the bundled digits
(or Fashion-MNIST): a few labels per class, the rest of the training set unlabelled.

    python examples/semi_supervised_digits.py [--labels 100] [--estimator enum] [--epochs 100]

Prints the test accuracy of M2's classifier q(y|x) trained with the unlabelled data, and of
the same model trained on the labelled points alone, plus M2's held-out ELBO.
The unlabelled label is summed out exactly (``enum``) or estimated (any name of
``pyro_vae.estimators.ESTIMATORS``).
"""

from __future__ import annotations

import argparse

import torch

from pyro_vae.bounds import elbo
from pyro_vae.commands.train import TrainConfig, load_dataset
from pyro_vae.data import hide_labels, split
from pyro_vae.estimators import ESTIMATORS, get_estimator
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import M2
from pyro_vae.train import fit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default="digits", help="'digits', 'fashion-mnist' (Debian package) or an IDX dir"
    )
    parser.add_argument("--labels", type=int, default=100, help="labelled training points (balanced)")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="enum")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=None, help="classification weight (default 0.1 N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    dataset = load_dataset(TrainConfig(data=args.data, binarization="static", seed=args.seed))
    splits = split(dataset, seed=args.seed)
    train, test = splits.train, splits.test
    labels = hide_labels(train.y, args.labels, num_classes=train.num_classes, seed=args.seed)
    alpha = args.alpha if args.alpha is not None else 0.1 * len(train)
    labelled = labels >= 0
    runs = {
        "M2, labelled + unlabelled": (train.x, labels),
        "M2, labelled points only": (train.x[labelled], labels[labelled]),
    }
    print(f"{args.labels} labels, {len(train) - args.labels} unlabelled points, estimator {args.estimator}")
    for name, data in runs.items():
        torch.manual_seed(args.seed)
        m2 = M2(Bernoulli(train.num_features), num_classes=train.num_classes, latent_dim=8, alpha=alpha)
        m2.validate_data(*data)
        fit(
            m2.model,
            m2.guide,
            data,
            validation=(splits.val.x, splits.val.y),
            loss=get_estimator(args.estimator).make_loss(),
            epochs=args.epochs,
            batch_size=min(100, len(data[0])),
            seed=args.seed,
            progress=not args.quiet,
        )
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            bound = elbo(m2.model, m2.guide, test.x, num_particles=10)  # label unknown: a bound on log p(x)
        print(
            f"{name:<27} test accuracy {m2.accuracy(test.x, test.y):.3f}   "
            f"test ELBO {bound.mean():.3f} ± {bound.std() / len(bound) ** 0.5:.3f} nats"
        )


if __name__ == "__main__":
    main()
