"""Comparing gradient estimators on a discrete-latent VAE, written to a directory.

The CLI's ``pyro-vae compare`` parses arguments into a :class:`CompareConfig` and calls
:func:`compare_run`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyro_vae import __version__
from pyro_vae._checks import check_positive, check_positive_int
from pyro_vae._io import atomic_write_json
from pyro_vae.comparison import Comparison, compare
from pyro_vae.data import split
from pyro_vae.errors import InputError
from pyro_vae.estimators import ESTIMATORS, TemperatureSchedule, get_estimator
from pyro_vae.estimators.enumeration import DEFAULT_MAX_CONFIGURATIONS
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import BernoulliLatent, CategoricalLatent, DiscreteVAE
from pyro_vae.run import TrainConfig, load_dataset

MODELS = ("categorical", "bernoulli")


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """Everything that defines an estimator comparison (saved as ``config.json``).

    The relaxed estimators anneal the temperature from ``temperature`` to
    ``min_temperature`` exponentially over the training budget (Jang et al.'s schedule,
    compressed to the budget); equal values keep it fixed.
    """

    data: str = "digits"
    model: str = "categorical"
    num_variables: int = 20
    num_categories: int = 10
    num_units: int = 200
    hidden: tuple[int, ...] = (256,)
    estimators: tuple[str, ...] = ("score", "score-avg", "nvil", "vimco", "gumbel", "st-gumbel")
    num_particles: int = 5
    temperature: float = 1.0
    min_temperature: float = 0.5
    gradient_samples: int = 100
    gradient_batch: int = 100
    warmup_steps: int = 100
    epochs: int = 20
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    eval_particles: int = 100
    trained_gradients: bool = False

    def validate(self) -> None:
        if self.model not in MODELS:
            raise InputError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if not self.estimators:
            raise InputError("name at least one estimator")
        for name in self.estimators:
            if name not in ESTIMATORS:
                raise InputError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)}")
        if len(set(self.estimators)) != len(self.estimators):
            raise InputError(f"estimators are repeated: {', '.join(self.estimators)}")
        for name in ("num_variables", "num_units", "num_particles", "gradient_batch", "epochs", "batch_size"):
            check_positive_int(getattr(self, name), name.replace("_", " "))
        check_positive_int(self.num_categories, "num categories", minimum=2)
        check_positive_int(self.gradient_samples, "gradient samples", minimum=2)
        check_positive_int(self.warmup_steps, "warm-up steps", minimum=0)
        check_positive_int(self.eval_particles, "eval particles")
        if not self.hidden:
            raise InputError("hidden needs at least one layer width")
        for h in self.hidden:
            check_positive_int(h, "hidden width")
        check_positive(self.lr, "learning rate")
        check_positive(self.min_temperature, "minimum temperature")
        if self.temperature < self.min_temperature:
            raise InputError(
                f"temperature {self.temperature} is below the minimum temperature {self.min_temperature}"
            )
        if "arm" in self.estimators and self.model != "bernoulli":
            raise InputError("the arm estimator is for Bernoulli codes; use --model bernoulli or drop arm")
        codes = self.num_categories**self.num_variables if self.model == "categorical" else 2**self.num_units
        if "enum" in self.estimators and codes > DEFAULT_MAX_CONFIGURATIONS:
            raise InputError(
                f"enum sums over every code, and this {self.model} code has {codes:.3g}, more than "
                f"{DEFAULT_MAX_CONFIGURATIONS}; use a smaller code (e.g. --variables 2 --categories 4) "
                "or drop enum"
            )
        if "vimco" in self.estimators and self.num_particles < 2:
            raise InputError(f"vimco needs --particles >= 2, got {self.num_particles}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def temperature_schedule(config: CompareConfig, steps: int) -> TemperatureSchedule:
    """From ``temperature`` to ``min_temperature`` over ``steps`` optimizer steps."""
    rate = math.log(config.temperature / config.min_temperature) / max(steps, 1)
    return TemperatureSchedule(initial=config.temperature, minimum=config.min_temperature, rate=rate, every=1)


def build_discrete_vae(config: CompareConfig, num_features: int) -> DiscreteVAE:
    code = (
        CategoricalLatent(config.num_variables, config.num_categories)
        if config.model == "categorical"
        else BernoulliLatent(config.num_units)
    )
    return DiscreteVAE(Bernoulli(num_features), code, hidden=config.hidden)


def compare_run(config: CompareConfig, out_dir: str | Path, *, progress: bool = True) -> Comparison:
    """Compare the configured estimators on a discrete VAE for binarized ``config.data``
    (training split for training and gradients, validation split held out) and write
    ``config.json``, ``comparison.csv``, ``comparison.json``, ``gradient_variance.png``
    (and ``gradient_variance_trained.png``) and ``training_curves.png`` into ``out_dir``,
    which must be new or empty. Everything is checked before anything is written."""
    config.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"output directory {out_dir} already exists and is not empty; choose another --out")
    data = load_dataset(TrainConfig(data=config.data, binarization="static", seed=config.seed))
    splits = split(data, val_fraction=0.1, test_fraction=0.1, seed=config.seed)
    torch.manual_seed(config.seed)
    vae = build_discrete_vae(config, data.num_features)
    vae.validate_data(splits.train.x, name=splits.train.name)
    vae.validate_data(splits.val.x, name=splits.val.name)
    steps = config.epochs * math.ceil(len(splits.train) / config.batch_size)
    tau = temperature_schedule(config, steps)
    estimators = [
        get_estimator(n, num_particles=config.num_particles, temperature=tau) for n in config.estimators
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
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
