"""``pyro-vae compare``: gradient estimators compared on a discrete-latent VAE, written to a
directory.

The CLI parses arguments into a :class:`~pyro_vae.commands.configs.CompareConfig` and calls
:func:`compare_run`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from pyro_vae import __version__
from pyro_vae._io import atomic_write_json, make_output_dir
from pyro_vae._lock import RunLock
from pyro_vae.commands.configs import MODELS, CompareConfig, TrainConfig, check_device
from pyro_vae.commands.train import load_dataset
from pyro_vae.comparison import Comparison, compare
from pyro_vae.data import split
from pyro_vae.errors import InputError
from pyro_vae.estimators import TemperatureSchedule, get_estimator
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import BernoulliLatent, CategoricalLatent, DiscreteVAE

__all__ = [
    "LATENT_CODES",
    "MODELS",
    "CompareConfig",
    "build_discrete_vae",
    "compare_run",
    "temperature_schedule",
]


def temperature_schedule(config: CompareConfig, steps: int) -> TemperatureSchedule:
    """From ``temperature`` to ``min_temperature`` over ``steps`` optimizer steps."""
    rate = math.log(config.temperature / config.min_temperature) / max(steps, 1)
    return TemperatureSchedule(initial=config.temperature, minimum=config.min_temperature, rate=rate, every=1)


LATENT_CODES: dict[str, Callable[[CompareConfig], CategoricalLatent | BernoulliLatent]] = {
    "categorical": lambda config: CategoricalLatent(config.num_variables, config.num_categories),
    "bernoulli": lambda config: BernoulliLatent(config.num_units),
}
"""The discrete code of each ``--model`` (its keys are :data:`~pyro_vae.commands.configs.MODELS`)."""


def build_discrete_vae(config: CompareConfig, num_features: int) -> DiscreteVAE:
    """The discrete VAE of ``config`` with a Bernoulli likelihood on ``num_features`` pixels."""
    code = LATENT_CODES[config.model](config)
    return DiscreteVAE(Bernoulli(num_features), code, hidden=config.hidden)


def compare_run(
    config: CompareConfig, out_dir: str | Path, *, progress: bool = True, device: str = "cpu"
) -> Comparison:
    """Compare the configured estimators on a discrete VAE for binarized ``config.data``
    (training split for training and gradients, validation split held out) and write
    ``config.json``, ``comparison.csv``, ``comparison.json``, ``gradient_variance.png``
    (and ``gradient_variance_trained.png``) and ``training_curves.png`` into ``out_dir``,
    which must be new or empty, on ``device`` (``"cpu"``, ``"cuda"`` or ``"auto"``). Everything
    is checked before anything is written."""
    config.validate()
    where = check_device(device)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"output directory {out_dir} already exists and is not empty; choose another --out")
    data = load_dataset(TrainConfig(data=config.data, binarization="static", seed=config.seed))
    splits = split(data, val_fraction=0.1, test_fraction=0.1, seed=config.seed)
    splits = type(splits)(train=splits.train.to(where), val=splits.val.to(where), test=splits.test.to(where))
    torch.manual_seed(config.seed)
    vae = build_discrete_vae(config, data.num_features).to(where)
    vae.validate_data(splits.train.x, name=splits.train.name)
    vae.validate_data(splits.val.x, name=splits.val.name)
    steps = config.epochs * math.ceil(len(splits.train) / config.batch_size)
    tau = temperature_schedule(config, steps)
    estimators = [
        get_estimator(n, num_particles=config.num_particles, temperature=tau) for n in config.estimators
    ]
    make_output_dir(out_dir)
    with RunLock(out_dir):
        atomic_write_json(out_dir / "config.json", {**config.to_json(), "pyro_vae_version": __version__})
        result = compare(
            vae.model,
            vae.guide,
            splits.train.x,
            estimators,
            validation=splits.val.x,
            num_gradient_samples=config.gradient_samples,
            gradient_batch_size=config.gradient_batch,
            warmup_steps=config.warmup_steps,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
            eval_particles=config.eval_particles,
            trained_gradients=config.trained_gradients,
            progress=progress,
        )
        result.save(out_dir)
    return result
