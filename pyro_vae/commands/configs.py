"""The configurations of the ``pyro-vae`` commands and the names they accept.

This module is light: it imports no torch, pyro or matplotlib, so that the CLI can build its
parsers (defaults and choices come from here) and print help without loading them. The
checks in ``validate`` import what they need when called. The name tuples mirror the
registries of the heavy modules, and ``tests/test_cli.py`` checks that they agree:
:data:`LIKELIHOOD_NAMES` is ``tuple(pyro_vae.likelihoods.LIKELIHOODS)``,
:data:`ESTIMATOR_NAMES` is ``pyro_vae.estimators.ESTIMATORS``, :data:`MODELS` is
``tuple(pyro_vae.commands.compare.LATENT_CODES)`` and :data:`MATMUL_NAMES` is
``pyro_vae.infer.onednn_matmul.MATMULS``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pyro_vae.errors import InputError

LIKELIHOOD_NAMES = ("bernoulli", "gaussian", "poisson", "nb", "zinb")
"""The names of :data:`pyro_vae.likelihoods.LIKELIHOODS`, accepted by ``--likelihood``."""

ESTIMATOR_NAMES = ("score", "score-avg", "nvil", "vimco", "arm", "gumbel", "st-gumbel", "enum")
"""The names of :data:`pyro_vae.estimators.ESTIMATORS`, accepted by ``--estimators``."""

MATMUL_NAMES = ("auto", "aten", "onednn")
"""The kernels of the captured graphs' matrix products (``--matmul``; see ``fit``'s ``matmul``)."""

MODELS = ("categorical", "bernoulli")
"""The discrete codes of ``pyro-vae compare`` (``--model``)."""

BINARIZATIONS = ("none", "static", "dynamic")
"""How ``pyro-vae train`` binarizes grey levels for the Bernoulli likelihood."""

PRIOR_NAMES = ("standard", "learned", "mog", "vamp")
"""The priors of ``pyro-vae train --prior``: :mod:`pyro_vae.priors` ``StandardNormal``,
``LearnedNormal``, ``MixtureOfGaussians``, ``VampPrior``."""

GUIDE_NAMES = ("gaussian", "iaf", "planar")
"""The posterior families of ``pyro-vae train --guide``: :mod:`pyro_vae.guides`
``DiagonalGaussian``, ``IAFPosterior``, ``PlanarPosterior``."""


def latent_layers(
    latent_dim: int | None, layers: tuple[int, ...] | None, default: int
) -> tuple[int, tuple[int, ...]]:
    """``(latent_dim, layers)`` of a configuration from ``--latent-dim`` and ``--layers`` (each
    ``None`` when not given): ``--latent-dim K`` is the shorthand of ``--layers K``; with
    ``--layers`` alone the first width is the latent dim; both given must agree on one layer."""
    if layers is None:
        return (default if latent_dim is None else latent_dim), ()
    if not layers:
        raise InputError("--layers needs at least one width, e.g. --layers 32,16")
    if latent_dim is not None and tuple(layers) != (latent_dim,):
        raise InputError(
            f"--latent-dim {latent_dim} contradicts --layers {','.join(map(str, layers))}: --latent-dim K is "
            "the one-layer shorthand of --layers K; pass only --layers"
        )
    return layers[0], (tuple(layers) if len(layers) > 1 else ())


TRAIN_MODELS = ("vae", "scvi")
"""The models of ``pyro-vae train`` (``--model``): the VAE, or the scVI model of single-cell
counts (:class:`pyro_vae.models.ScVI`)."""

LIBRARIES = ("observed", "latent")
"""The library size of the scVI model (``--library``): observed (a size factor) or latent."""
DEVICES = ("cpu", "cuda", "auto")
"""Where ``--device`` puts the data and the model: ``auto`` is CUDA when PyTorch sees a GPU."""


def check_device(name: str) -> str:
    """The torch device of a ``--device`` name (``"cpu"`` or ``"cuda"``); :class:`InputError`
    for an unknown name, or for ``cuda`` where PyTorch sees no GPU. Imports torch when called."""
    if name not in DEVICES:
        raise InputError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    import torch

    gpu = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if gpu else "cpu"
    if name == "cuda" and not gpu:
        raise InputError(
            "--device cuda, but PyTorch sees no GPU (torch.cuda.is_available() is False: no GPU, "
            "no driver, or a CPU-only build of PyTorch); use --device cpu or --device auto"
        )
    return name


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json``)."""

    data: str = "digits"
    binarization: str | None = None
    """``"none"``, ``"static"`` or ``"dynamic"``; ``None`` follows the likelihood (static for
    Bernoulli, none otherwise): see :attr:`binarize`."""
    label_column: int | None = None
    likelihood: str = "bernoulli"
    allow_probabilities: bool = False
    conditional: bool = False
    latent_dim: int = 8
    hidden: tuple[int, ...] = (256,)
    beta: float = 1.0
    warmup_epochs: float = 0.0
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    eval_particles: int = 10
    prior: str = "standard"
    guide: str = "gaussian"
    layers: tuple[int, ...] = ()
    """Latent widths of the stochastic layers from the data up (two or more: a hierarchical
    VAE); empty for one layer of ``latent_dim``."""
    prior_components: int = 10
    flow_steps: int = 2
    refine_steps: int = 0
    """Semi-amortized training: gradient steps refining the encoder's Gaussian per datapoint
    (0: amortized), differentiated through (SA-VAE); ``evaluate`` then also reports the
    bounds of the refined guide."""
    refine_lr: float = 0.01
    """The step size of the refinement steps."""
    model: str | None = None
    """``"vae"`` or ``"scvi"``; ``None`` follows the data: scVI for AnnData (``.h5ad``) counts
    with an ``nb`` or ``zinb`` likelihood, the VAE otherwise (see :attr:`model_name`)."""
    layer: str | None = None
    """AnnData: the layer holding the counts (``None``: ``X``)."""
    batch_key: str | None = None
    """AnnData: the ``obs`` column of the batch (a covariate of encoder and decoder)."""
    library: str = "observed"
    """scVI: the library size observed (a size factor) or ``"latent"`` (log-normal prior)."""
    free_bits: float = 0.0
    """:math:`\\lambda` nats per latent dimension (free bits); 0: the ELBO."""
    track_log_marginal: int = 0
    """``K`` of the held-out :math:`\\mathcal L_K` recorded during training; 0: none."""
    track_every: int = 1
    """Epochs between two records of the held-out :math:`\\mathcal L_K`."""
    capture: bool = True
    """The training step captured and replayed once its structure is known (``fit``'s
    ``capture_after``; bitwise the eager step with ``matmul="aten"``); ``False``: every step eager."""
    matmul: str = "auto"
    """The kernels of the captured step's matrix products (``fit``'s ``matmul``)."""
    compile: bool | None = None
    """The captured step also compiled by TorchInductor (``fit``'s ``compile``; ``None``: on
    runs of at least ``pyro_vae.train.step.COMPILE_STEPS`` steps)."""

    @property
    def latent_widths(self) -> tuple[int, ...]:
        """The width of each stochastic layer: ``layers``, or ``(latent_dim,)``."""
        return self.layers or (self.latent_dim,)

    @property
    def model_name(self) -> str:
        """The model in force: the one given, or the data's default (see :attr:`model`)."""
        if self.model is not None:
            return self.model
        return "scvi" if self.data.endswith(".h5ad") and self.likelihood in ("nb", "zinb") else "vae"

    @property
    def binarize(self) -> str:
        """The binarization in force: the one given, or the likelihood's default (static for
        Bernoulli, none for the others)."""
        if self.binarization is not None:
            return self.binarization
        return "static" if self.likelihood == "bernoulli" else "none"

    def validate(self) -> None:
        from pyro_vae._checks import check_nonnegative, check_positive, check_positive_int, check_widths
        from pyro_vae.infer.onednn_matmul import check_matmul

        check_matmul(self.matmul)
        if self.compile:
            from pyro_vae.infer.captured import check_compile

            if not self.capture:
                raise InputError("--compile compiles the captured step; --no-capture captures nothing")
            check_compile(True)
        if self.likelihood not in LIKELIHOOD_NAMES:
            raise InputError(
                f"unknown likelihood {self.likelihood!r}; choose from {sorted(LIKELIHOOD_NAMES)}"
            )
        if self.binarization is not None and self.binarization not in BINARIZATIONS:
            raise InputError(f"binarization must be none, static or dynamic, got {self.binarization!r}")
        if self.binarization not in (None, "none") and self.likelihood != "bernoulli":
            raise InputError(
                f"binarization applies to the Bernoulli likelihood, not {self.likelihood!r}; "
                "drop --binarization (or pass --binarization none)"
            )
        self._validate_single_cell()
        check_positive_int(self.latent_dim, "latent dim")
        check_widths(self.hidden)
        check_nonnegative(self.beta, "beta")
        check_nonnegative(self.warmup_epochs, "warm-up epochs")
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch size")
        check_positive(self.lr, "learning rate")
        check_positive_int(self.eval_particles, "eval particles")
        check_positive_int(self.refine_steps, "refine steps", minimum=0)
        check_positive(self.refine_lr, "refine learning rate")
        check_nonnegative(self.free_bits, "free bits")
        check_positive_int(self.track_log_marginal, "track-log-marginal K", minimum=0)
        check_positive_int(self.track_every, "track-every")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1):
            raise InputError("validation and test fractions must lie in (0, 1)")
        self._validate_latent_families()

    def _validate_latent_families(self) -> None:
        """Prior, guide and layers: known names, and combinations that exist."""
        from pyro_vae._checks import check_positive_int

        if self.prior not in PRIOR_NAMES:
            raise InputError(f"unknown prior {self.prior!r}; choose from {', '.join(PRIOR_NAMES)}")
        if self.guide not in GUIDE_NAMES:
            raise InputError(f"unknown guide {self.guide!r}; choose from {', '.join(GUIDE_NAMES)}")
        for width in self.layers:
            check_positive_int(width, "layer width")
        if len(self.layers) == 1 or (self.layers and self.layers[0] != self.latent_dim):
            raise InputError(f"layers {self.layers} must be empty or start with latent_dim {self.latent_dim}")
        check_positive_int(self.prior_components, "prior components")
        check_positive_int(self.flow_steps, "flow steps")
        hierarchical = len(self.layers) > 1
        if hierarchical and self.guide != "gaussian":
            raise InputError(
                f"--guide {self.guide} is for one stochastic layer; drop it or pass one width in --layers"
            )
        if hierarchical and self.conditional:
            raise InputError(
                "--conditional is for one stochastic layer; drop it or pass one width in --layers"
            )
        if self.refine_steps and (hierarchical or self.guide != "gaussian"):
            raise InputError(
                "--refine-steps refines the encoder's one diagonal Gaussian per datapoint: it needs one "
                "stochastic layer and --guide gaussian"
            )
        if self.prior == "vamp" and (self.conditional or self.guide != "gaussian" or hierarchical):
            raise InputError(
                "--prior vamp mixes the encoder's Gaussian posteriors at pseudo-inputs of the data: "
                "it needs one stochastic layer, --guide gaussian and no --conditional"
            )

    def _validate_single_cell(self) -> None:
        if self.model is not None and self.model not in TRAIN_MODELS:
            raise InputError(f"unknown model {self.model!r}; choose from {', '.join(TRAIN_MODELS)}")
        if self.library not in LIBRARIES:
            raise InputError(f"library must be observed or latent, got {self.library!r}")
        if (self.layer is not None or self.batch_key is not None) and not self.data.endswith(".h5ad"):
            raise InputError("--layer and --batch-key read AnnData files; --data must be a .h5ad file")
        if self.model_name == "scvi" and self.likelihood not in ("nb", "zinb"):
            raise InputError(f"the scvi model takes --likelihood nb or zinb, not {self.likelihood!r}")
        if self.batch_key is not None and not self.conditional:
            raise InputError("a batch key is a covariate: it needs conditional=True (the CLI sets it)")
        if self.library != "observed" and self.model_name != "scvi":
            raise InputError("--library applies to the scvi model (--model scvi)")
        if self.model_name == "scvi" and (
            self.prior != "standard" or self.guide != "gaussian" or self.layers or self.refine_steps
        ):
            raise InputError(
                "the scvi model has its own N(0, I) prior and Gaussian encoder over one layer: drop "
                "--prior, --guide, --layers and --refine-steps (or pass --model vae)"
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise InputError(f"config has unknown keys {sorted(unknown)}")
        obj = dict(obj)
        if "hidden" in obj:
            obj["hidden"] = tuple(obj["hidden"])
        if "layers" in obj:
            obj["layers"] = tuple(obj["layers"])
        return cls(**obj)


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """What ``pyro-vae evaluate`` computes on a run's test data, and with how many samples."""

    ks: tuple[int, ...] = (1, 5, 50, 500, 5000)
    num_points: int = 500
    gap_points: int = 20
    gap_steps: int = 300
    elbo_particles: int = 100
    k_hat_particles: int = 1000
    max_rows: int | None = None
    """Particle-rows per chunk of the bounds (``None``: each bound's default, sized to the data)."""
    seed: int = 0
    surgery_particles: int = 10
    """Draws per test point for ELBO surgery (the posterior-collapse panel)."""
    ais_steps: int = 0
    """Annealing steps of the AIS row (``--ais STEPS``; 0: no AIS)."""
    ais_chains: int = 16
    matmul: str = "auto"
    """The kernels of the captured bounds' matrix products (``fit``'s ``matmul``)."""
    compile: bool | None = None
    """Compile the bounds' captured chunks (``None``: for a bound of at least
    :data:`~pyro_vae.infer.captured_log_weights.COMPILE_CHUNKS` chunks, where it pays)."""

    def validate(self) -> None:
        from pyro_vae._checks import check_positive_int
        from pyro_vae.infer.onednn_matmul import check_matmul

        check_matmul(self.matmul)
        if self.compile:
            from pyro_vae.infer.captured import check_compile

            check_compile(True)

        check_positive_int(self.surgery_particles, "surgery particles")
        check_positive_int(self.ais_steps, "AIS steps", minimum=0)
        check_positive_int(self.ais_chains, "AIS chains")
        if not self.ks:
            raise InputError("need at least one K")
        for k in self.ks:
            check_positive_int(k, "K")
        for name in ("num_points", "elbo_particles", "k_hat_particles"):
            check_positive_int(getattr(self, name), name.replace("_", " "))
        if self.max_rows is not None:
            check_positive_int(self.max_rows, "max rows")
        check_positive_int(self.gap_points, "gap points", minimum=0)
        check_positive_int(self.gap_steps, "gap steps")


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
        from pyro_vae._checks import check_positive, check_positive_int, check_widths
        from pyro_vae.estimators.enumeration import DEFAULT_MAX_CONFIGURATIONS

        if self.model not in MODELS:
            raise InputError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if not self.estimators:
            raise InputError("name at least one estimator")
        for name in self.estimators:
            if name not in ESTIMATOR_NAMES:
                raise InputError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATOR_NAMES)}")
        if len(set(self.estimators)) != len(self.estimators):
            raise InputError(f"estimators are repeated: {', '.join(self.estimators)}")
        for name in ("num_variables", "num_units", "num_particles", "gradient_batch", "epochs", "batch_size"):
            check_positive_int(getattr(self, name), name.replace("_", " "))
        check_positive_int(self.num_categories, "num categories", minimum=2)
        check_positive_int(self.gradient_samples, "gradient samples", minimum=2)
        check_positive_int(self.warmup_steps, "warm-up steps", minimum=0)
        check_positive_int(self.eval_particles, "eval particles")
        check_widths(self.hidden)
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
