"""``pyro-vae train``: a training run on disk, with config, metrics, checkpoint and figures in
one directory.

The CLI parses arguments into a :class:`~pyro_vae.commands.configs.TrainConfig` and calls
:func:`train_run`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae import __version__
from pyro_vae._io import (
    atomic_write_csv,
    atomic_write_json,
    make_output_dir,
    remove_stale_temporaries,
)
from pyro_vae._lock import RunLock
from pyro_vae._stats import mean_and_se
from pyro_vae.commands.configs import TrainConfig, check_device
from pyro_vae.commands.refinement import training_guide
from pyro_vae.data import (
    FASHION_MNIST_DIR,
    Dataset,
    DynamicBinarization,
    Splits,
    binarize,
    load_array,
    load_digits,
    load_idx,
    split,
)
from pyro_vae.errors import InputError
from pyro_vae.infer.onednn_matmul import resolve_matmul
from pyro_vae.likelihoods import LIKELIHOODS, Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import Distributed, FitResult, KLWarmup, fit, rate_distortion
from pyro_vae.train.distributed import in_torchrun, local_device, maybe_process_group, rank
from pyro_vae.train.step import FIT_CAPTURE_AFTER

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "SUMMARY",
    "TrainConfig",
    "TrainRun",
    "build_model",
    "format_summary",
    "load_dataset",
    "prepare",
    "read_config",
    "train_run",
    "write_figures",
]

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
SUMMARY = "summary.json"


def read_config(run_dir: str | Path) -> TrainConfig:
    """The :class:`~pyro_vae.commands.configs.TrainConfig` that :func:`train_run` saved in
    ``run_dir`` (its ``config.json``)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise InputError(f"{run_dir} is not a run directory (no {CONFIG})")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from e
    obj.pop("pyro_vae_version", None)
    # a run written before the default became "auto" ran PyTorch's kernels: resumed on them
    obj.setdefault("matmul", "aten")
    return TrainConfig.from_json(obj)


def load_dataset(config: TrainConfig) -> Dataset:
    """The data named by ``config.data``: ``digits``, ``fashion-mnist`` (all 70,000 images), an IDX
    directory, an AnnData ``.h5ad`` file, or an array file."""
    static = config.binarize == "static"
    if config.data == "digits":
        return load_digits(binarize=static, seed=config.seed)
    if config.data == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise InputError(
                f"Fashion-MNIST is not installed at {FASHION_MNIST_DIR}; install Debian's package "
                "(apt-get install dataset-fashion-mnist), or pass the directory of the IDX files"
            )
        return load_idx(
            FASHION_MNIST_DIR, split="all", name="fashion-mnist", binarize=static, seed=config.seed
        )
    path = Path(config.data)
    if path.suffix == ".h5ad":
        from pyro_vae.data.h5ad import load_h5ad

        return load_h5ad(path, layer=config.layer, batch_key=config.batch_key)
    if path.is_dir():
        return load_idx(path, binarize=static, seed=config.seed)
    data = load_array(path, label_column=config.label_column)
    return (
        Dataset(x=binarize(data.x, seed=config.seed), y=data.y, name=data.name, num_classes=data.num_classes)
        if static
        else data
    )


def build_model(config: TrainConfig, data: Dataset) -> VAE:
    """The VAE described by ``config``, for data shaped like ``data`` (a
    :class:`~pyro_vae.models.HierarchicalVAE` for two or more ``layers``, the scVI model for
    ``model="scvi"``)."""
    if config.model_name == "scvi":
        from pyro_vae.commands.single_cell import build_scvi

        return build_scvi(config, data)  # type: ignore[return-value]
    cls = LIKELIHOODS[config.likelihood]
    probs = config.allow_probabilities or config.binarize == "dynamic"
    likelihood = (
        cls(data.num_features, allow_probabilities=probs) if cls is Bernoulli else cls(data.num_features)
    )
    if config.conditional and data.y is None:
        raise InputError(f"--conditional needs labels, and {data.name} has none")
    from pyro_vae.commands.latent_model import build_latent_model  # prior, guide and layers

    num_classes = data.num_classes if config.conditional else 0
    return build_latent_model(config, likelihood, data, num_classes=num_classes)


def prepare(config: TrainConfig) -> tuple[Splits, VAE]:
    """Load, split and check the data and build the model: every user error surfaces here."""
    config.validate()
    data = load_dataset(config)
    splits = split(
        data, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed
    )
    torch.manual_seed(config.seed)
    model = build_model(config, data)
    for part in (splits.train, splits.val, splits.test):
        model.validate_data(part.x, part.y if config.conditional else None, name=part.name)
    return splits, model


@dataclass(frozen=True)
class TrainRun:
    run_dir: Path
    config: TrainConfig
    model: VAE
    fit: FitResult
    summary: dict[str, Any]
    main: bool = True
    """Whether this process wrote the run (rank 0 of a distributed run, or the only process)."""


def train_run(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
    distributed: bool | None = None,
) -> TrainRun:
    """Train the configured VAE on ``device`` (``"cpu"``, ``"cuda"`` or ``"auto"``) and write
    ``run_dir``; data-parallel over ``torchrun`` 's processes when ``distributed`` (``None``:
    when started by ``torchrun``), rank 0 writing everything (docs/scaling-up.md).
    """
    where = torch.device(check_device(device))
    options = Distributed() if (in_torchrun() if distributed is None else distributed) else None
    with maybe_process_group(options, local_device(where)):
        return _train_run(
            config,
            Path(run_dir),
            resume=resume,
            progress=progress,
            device=local_device(where),
            options=options,
        )


def _train_run(
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    device: torch.device,
    options: Distributed | None,
) -> TrainRun:
    """Train the configured VAE and write ``run_dir``.

    A new run refuses a non-empty ``run_dir`` (nothing there is overwritten); ``resume``
    continues the run in ``run_dir`` from its checkpoint with the saved configuration,
    taking only ``config.epochs`` from the caller (to train longer).
    All data and options are checked before anything is written, and the run directory is
    locked while the run writes into it: a second process is refused.
    """
    run_dir = Path(run_dir)
    if resume:
        for name in (CONFIG, CHECKPOINT):
            if not (run_dir / name).is_file():
                raise InputError(f"cannot resume: {run_dir / name} does not exist")
        config = dataclasses.replace(read_config(run_dir), epochs=config.epochs)
    elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise InputError(
            f"run directory {run_dir} already exists and is not empty; choose another --out, or --resume it"
        )
    else:  # the kernels this machine resolves "auto" to, saved: a resume runs on them anywhere
        config = dataclasses.replace(config, matmul=resolve_matmul(config.matmul))
    splits, model = prepare(config)
    splits = Splits(train=splits.train.to(device), val=splits.val.to(device), test=splits.test.to(device))
    model.to(device)
    if options is not None:  # every rank has checked the run directory before rank 0 writes
        torch.distributed.barrier()
        if rank() != 0:
            return _train_locked(
                config, run_dir, splits, model, resume=resume, progress=False, options=options
            )
    make_output_dir(run_dir, what="run directory")
    with RunLock(run_dir):
        remove_stale_temporaries(run_dir)  # a killed run's half-written files, never renamed
        return _train_locked(
            config, run_dir, splits, model, resume=resume, progress=progress, options=options
        )


def _train_locked(
    config: TrainConfig,
    run_dir: Path,
    splits: Splits,
    model: VAE,
    *,
    resume: bool,
    progress: bool,
    options: Distributed | None = None,
) -> TrainRun:
    """The run itself, with the run directory locked (see :class:`pyro_vae._lock.RunLock`);
    in a distributed run, ranks other than 0 train alongside and write nothing."""
    with_labels = config.conditional
    main = options is None or rank() == 0
    if not resume and main:
        atomic_write_json(run_dir / CONFIG, {**config.to_json(), "pyro_vae_version": __version__})
    tic = time.perf_counter()
    result = fit(
        model.model,
        training_guide(config, model),
        splits.train.tensors(with_labels=with_labels),
        validation=splits.val.tensors(with_labels=with_labels),
        lr=config.lr,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        kl_warmup=KLWarmup(config.warmup_epochs) if config.warmup_epochs > 0 else None,
        transform=DynamicBinarization() if config.binarize == "dynamic" else None,
        checkpoint=run_dir / CHECKPOINT,
        resume=resume,
        progress=progress,
        distributed=options or False,
        loss=_loss(config),
        track_log_marginal=config.track_log_marginal or None,
        track_every=config.track_every,
        capture_after=FIT_CAPTURE_AFTER if config.capture else None,
        matmul=config.matmul,
        compile=config.compile,
    )
    seconds = time.perf_counter() - tic
    if not main:
        return TrainRun(run_dir=run_dir, config=config, model=model, fit=result, summary={}, main=False)
    test = splits.test.tensors(with_labels=with_labels)
    with torch.random.fork_rng():
        pyro.set_rng_seed(config.seed)
        rd = rate_distortion(model.model, model.guide, test, num_particles=config.eval_particles)
    n_test = len(splits.test)
    test_elbo, test_elbo_se = mean_and_se(rd.elbo)
    summary = {
        "data": splits.train.name.split(" (")[0],
        "num_train": len(splits.train),
        "num_test": n_test,
        "epochs": config.epochs,
        "train_seconds": seconds,
        "test_elbo": test_elbo,
        "test_elbo_se": test_elbo_se,
        "test_rate": rd.rate.mean().item(),
        "test_distortion": rd.distortion.mean().item(),
        "test_rate_se": mean_and_se(rd.rate)[1],
        "test_distortion_se": mean_and_se(rd.distortion)[1],
        "val_elbo": result.last("val_elbo"),
        "eval_particles": config.eval_particles,
    }
    atomic_write_csv(run_dir / METRICS, result.history)
    atomic_write_json(run_dir / SUMMARY, summary)
    write_figures(run_dir, model, splits, result, conditional=with_labels, seed=config.seed)
    return TrainRun(run_dir=run_dir, config=config, model=model, fit=result, summary=summary)


def _loss(config: TrainConfig) -> Any:
    """The training loss: free bits when ``config.free_bits > 0``, else fit's default (the ELBO)."""
    if config.free_bits <= 0:
        return None
    from pyro_vae.estimators.free_bits import FreeBitsELBO

    return FreeBitsELBO(config.free_bits)


def write_figures(
    run_dir: Path, model: VAE, splits: Splits, result: FitResult, *, conditional: bool, seed: int
) -> None:
    """``curves.png``, ``reconstructions.png``, ``samples.png`` and ``latent.png``."""
    from pyro_vae.plotting import plot_latent, plot_reconstructions, plot_samples, plot_training_curves

    test = splits.test
    y = test.y if conditional else None
    plot_training_curves(result.history, run_dir / "curves.png")
    k = min(10, len(test))
    plot_reconstructions(
        test.x[:k],
        model.reconstruct(test.x[:k], None if y is None else y[:k]),
        run_dir / "reconstructions.png",
        test.image_shape,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        labels = torch.arange(30, device=test.x.device) % max(test.num_classes, 1) if conditional else None
        samples = model.sample_prior(30, labels, like=test.x)
    plot_samples(samples, run_dir / "samples.png", test.image_shape)
    plot_latent(model.encode(test.x, y)[0], run_dir / "latent.png", test.y)


def format_summary(summary: dict[str, Any]) -> str:
    """A small table for the terminal."""
    rows = [
        ("data", summary["data"]),
        ("train / test points", f"{summary['num_train']} / {summary['num_test']}"),
        ("epochs (seconds)", f"{summary['epochs']} ({summary['train_seconds']:.1f} s)"),
        ("validation ELBO", f"{summary['val_elbo']:.3f} nats"),
        ("test ELBO", f"{summary['test_elbo']:.3f} ± {summary['test_elbo_se']:.3f} nats"),
        ("test rate (KL)", f"{summary['test_rate']:.3f} nats"),
        ("test distortion", f"{summary['test_distortion']:.3f} nats"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
