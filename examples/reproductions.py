"""Scaled-down reproductions of three tables, on statically binarized Fashion-MNIST:

- ``iwae``: Burda et al. (2016), Table 1: 1 vs 2 stochastic layers, trained with the
  ELBO (k = 1) or the IWAE bound with k = 5 (and 50), held-out L_5000 and active units;
- ``vamp``: Tomczak & Welling (2018): standard normal prior vs mixture of Gaussians vs VampPrior;
- ``iaf``: Kingma et al. (2016): diagonal Gaussian vs inverse autoregressive flow posterior.

    python examples/reproductions.py --table iwae [--seeds 0,1,2] [--train-size 10000]
        [--epochs 10] [--test-points 500] [--k 5000] [--out runs/reproductions]

Every row of a table has the same data (the first ``--train-size`` training images, the
first ``--test-points`` test images, binarized once with seed 0), the same epochs, batch
size and learning rate; each seed draws the initial weights and the minibatch order. Each
row reports the held-out L_K and ELBO (mean over seeds ± SE over seeds; the SE over test
points of one seed is in the CSV), its paired difference from the table's first row
(mean ± SE over seeds of the per-seed difference) and the active units per latent site.
Writes ``{table}.csv`` and ``{table}.json`` in ``--out`` and prints the table; each
(configuration, seed) is run once, kept in ``runs/`` there and reused by the other tables
and by later calls with the same settings (two calls for different tables can share an
output directory and run at once).
``--data digits`` uses the bundled 8x8 digits instead (for a quick check).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae._io import atomic_write_csv, atomic_write_json, atomic_write_text
from pyro_vae.bounds import IWAE
from pyro_vae.data import FASHION_MNIST_DIR, load_digits, load_idx
from pyro_vae.guides import IAFPosterior
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE, HierarchicalVAE
from pyro_vae.networks import GaussianEncoder
from pyro_vae.priors import MixtureOfGaussians, VampPrior
from pyro_vae.train import fit_and_evaluate, over_seeds


@dataclass(frozen=True)
class Row:
    """One configuration: a row of a table."""

    label: str
    layers: int = 1
    train_k: int = 1
    prior: str = "standard"  # standard | mog | vamp
    posterior: str = "diagonal"  # diagonal | iaf
    paper: str = ""  # the paper's number(s) for this row, MNIST

    @property
    def key(self) -> str:
        """The configuration without its label: rows of different tables with the same key
        are the same runs."""
        return f"layers{self.layers}-k{self.train_k}-{self.prior}-{self.posterior}"


@dataclass(frozen=True)
class Sizes:
    """Network sizes (scaled down from the papers')."""

    latent: int = 20
    hidden: int = 200
    components: int = 50  # mixture components / pseudo-inputs (the VampPrior paper: 500)
    iaf_steps: int = 2
    context: int = 20


# The papers' MNIST numbers: Burda et al. Table 1 (test log p(x) by L_5000, active units
# of 50 (1 layer) or 100+50 (2 layers)); Tomczak & Welling Table 2, static MNIST, VAE (L=1)
# test log-likelihood; Kingma et al. Table 1, test ELBO and log p(x).
def tables(train_ks: tuple[int, ...]) -> dict[str, list[Row]]:
    burda = {
        (1, 1): "-86.76, 19 active",
        (1, 5): "-85.54 (VAE k=5: -86.47), 22 active",
        (1, 50): "-84.78 (VAE k=50: -86.35), 25 active",
        (2, 1): "-85.33, 16+5 active",
        (2, 5): "-83.89 (VAE k=5: -85.01), 21+5 active",
        (2, 50): "-82.90 (VAE k=50: -84.78), 26+7 active",
    }
    return {
        "iwae": [
            Row(
                f"{layers} layer{'s' * (layers > 1)}, k={k}",
                layers=layers,
                train_k=k,
                paper=burda.get((layers, k), ""),
            )
            for layers in (1, 2)
            for k in train_ks
        ],
        "vamp": [
            Row("standard normal", paper="-88.56"),
            Row("mixture of Gaussians", prior="mog", paper="-86.55"),
            Row("VampPrior", prior="vamp", paper="-85.57"),
        ],
        "iaf": [
            Row("diagonal Gaussian", paper="ELBO -84.08, log p(x) -81.08"),
            Row("IAF", posterior="iaf", paper="ELBO -81.70, log p(x) -79.77 (depth 2, width 320)"),
        ],
    }


def load(data: str, train_size: int, test_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    if data == "digits":
        x = load_digits(binarize=True, seed=0).x
        return x[:train_size], x[-test_points:]
    train = load_idx(FASHION_MNIST_DIR, split="train", binarize=True, seed=0).x
    test = load_idx(FASHION_MNIST_DIR, split="test", binarize=True, seed=0).x
    return train[:train_size], test[:test_points]


def build(row: Row, sizes: Sizes, train: torch.Tensor) -> VAE | HierarchicalVAE:
    """The model of one row, by composition of the library's parts."""
    likelihood = Bernoulli(train.shape[1])
    hidden = (sizes.hidden,)
    if row.layers == 2:
        return HierarchicalVAE(
            likelihood,
            latent_dims=(sizes.latent, sizes.latent // 2),
            hidden=hidden,
            latent_hidden=(sizes.hidden // 2,),
        )
    if row.prior == "vamp":
        encoder = GaussianEncoder(train.shape[1], hidden, sizes.latent)
        init = train[torch.randperm(len(train))[: sizes.components]]
        prior = VampPrior(encoder, sizes.components, train.shape[1], init=init)
        return VAE(likelihood, latent_dim=sizes.latent, hidden=hidden, encoder=encoder, prior=prior)
    prior = MixtureOfGaussians(sizes.latent, sizes.components) if row.prior == "mog" else None
    posterior = (
        IAFPosterior(sizes.latent, sizes.context, num_steps=sizes.iaf_steps)
        if row.posterior == "iaf"
        else None
    )
    return VAE(likelihood, latent_dim=sizes.latent, hidden=hidden, prior=prior, posterior=posterior)


def run_one(row: Row, seed: int, train: torch.Tensor, test: torch.Tensor, args: argparse.Namespace) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = build(row, Sizes(), train)
    result = fit_and_evaluate(
        model.model,
        model.guide,
        train,
        test,
        loss=IWAE(num_particles=row.train_k) if row.train_k > 1 else None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        num_particles=args.k,
        active_unit_samples=args.active_unit_samples,
        progress=False,
    )
    return {"seed": seed, **result.summary()}


def summarize(rows: list[Row], per_seed: dict[str, list[dict]]) -> list[dict]:
    """One line per row that has runs: means and SEs over its seeds, and the paired
    difference from the first row (over the seeds both have)."""
    first = {r["seed"]: r for r in per_seed[rows[0].label]}
    out = []
    for row in rows:
        runs = per_seed[row.label]
        if not runs:
            continue
        for r in runs:
            if r["seed"] in first:
                r["log_marginal_minus_first"] = r["log_marginal"] - first[r["seed"]]["log_marginal"]
            r["gap"] = r["log_marginal"] - r["elbo"]
        mean = over_seeds(runs)
        mean["seeds"] = ",".join(str(r["seed"]) for r in runs)
        mean.setdefault("log_marginal_minus_first", math.nan)
        mean.setdefault("log_marginal_minus_first_se_seeds", math.nan)
        mean.pop("seed", None)
        mean.pop("seed_se_seeds", None)
        out.append(
            {"table_row": row.label, **mean, "paper_mnist": row.paper, "config": json.dumps(asdict(row))}
        )
    return out


def _pm(mean: float, se: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" if math.isnan(se) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def format_table(name: str, summary: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"{name}: held-out L_{args.k} and ELBO (nats, mean ± SE over seeds {args.seeds}), {args.data}, "
        f"{args.train_size} train / {args.test_points} test images, {args.epochs} epochs, "
        f"batch {args.batch_size}",
        f"{'row':<22} {'L_K':>16} {'ELBO':>16} {'L_K - row 1':>14} {'active units':>14}  paper (MNIST)",
    ]
    for r in summary:
        active = "+".join(
            f"{r[k]:.1f}" for k in sorted(r) if k.startswith("active_") and not k.endswith("_seeds")
        )
        lines.append(
            f"{r['table_row']:<22} {_pm(r['log_marginal'], r['log_marginal_se_seeds']):>16} "
            f"{_pm(r['elbo'], r['elbo_se_seeds']):>16} "
            f"{_pm(r['log_marginal_minus_first'], r['log_marginal_minus_first_se_seeds']):>14} "
            f"{active:>14}  {r['paper_mnist']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--table", default="all", help="iwae, vamp, iaf, a comma-separated list, or all")
    parser.add_argument("--data", choices=("fashion-mnist", "digits"), default="fashion-mnist")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--test-points", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--k", type=int, default=5000, help="particles of the held-out L_K")
    parser.add_argument("--train-k", default="1,5", help="IWAE table: training k values")
    parser.add_argument("--active-unit-samples", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("runs/reproductions"))
    parser.add_argument(
        "--collect-only", action="store_true", help="tabulate the runs in --out and train nothing"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    all_tables = tables(tuple(int(k) for k in args.train_k.split(",")))
    names = list(all_tables) if args.table == "all" else args.table.split(",")
    unknown = sorted(set(names) - set(all_tables))
    if unknown:
        parser.error(f"unknown table(s) {unknown}; choose from {sorted(all_tables)} or all")
    torch.set_num_threads(1)
    train, test = load(args.data, args.train_size, args.test_points)
    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in ("table", "seeds", "out", "quiet", "train_k", "collect_only")
    }

    # One run per (configuration, seed), shared by the tables that have it; every
    # configuration of the first seed first, so that a stopped call leaves whole tables.
    configs = {row.key: row for name in names for row in all_tables[name]}
    jobs = [(row, seed) for seed in seeds for row in configs.values()]
    results: dict[tuple[str, int], dict] = {}
    for row, seed in tqdm(jobs, desc="runs", disable=args.quiet):
        path = args.out / "runs" / f"{row.key}-seed{seed}.json"
        saved = json.loads(path.read_text()) if path.is_file() else None
        if saved is None or saved["settings"] != settings:
            if args.collect_only:
                continue
            saved = {"settings": settings, "result": run_one(row, seed, train, test, args)}
            atomic_write_json(path, saved)
        results[row.key, seed] = saved["result"]
    per_seed = {
        name: {
            row.label: [dict(results[row.key, s]) for s in seeds if (row.key, s) in results]
            for row in all_tables[name]
        }
        for name in names
    }

    for name in names:
        summary = summarize(all_tables[name], per_seed[name])
        text = format_table(name, summary, args)
        absent = [
            f"{r.label}: seeds {[s for s in seeds if (r.key, s) not in results]}" for r in all_tables[name]
        ]
        absent = [
            a
            for a, r in zip(absent, all_tables[name], strict=True)
            if len(per_seed[name][r.label]) < len(seeds)
        ]
        if absent:
            text += "\nmissing runs: " + "; ".join(absent)
        print(text + "\n")
        atomic_write_text(args.out / f"{name}.txt", text + "\n")
        atomic_write_csv(args.out / f"{name}.csv", summary)
        atomic_write_json(
            args.out / f"{name}.json", {"settings": settings, "rows": summary, "per_seed": per_seed[name]}
        )


if __name__ == "__main__":
    main()
