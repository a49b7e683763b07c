"""Training: :func:`fit` for any Pyro model/guide pair, checkpoints and schedules."""

from pyro_vae.train.checkpoint import load_checkpoint, load_parameters, save_checkpoint
from pyro_vae.train.distributed import Distributed
from pyro_vae.train.evaluation import RateDistortion, rate_distortion
from pyro_vae.train.fit import FitResult, fit
from pyro_vae.train.fused_adam import FusedAdam
from pyro_vae.train.held_out import HeldOut, fit_and_evaluate, over_seeds
from pyro_vae.train.schedules import KLWarmup
from pyro_vae.train.state import TrainState
from pyro_vae.train.step import train_step
from pyro_vae.train.streams import AuxiliaryObjective, Stream
from pyro_vae.train.tracking import LogMarginalTracker

__all__ = [
    "AuxiliaryObjective",
    "Distributed",
    "FitResult",
    "FusedAdam",
    "HeldOut",
    "KLWarmup",
    "LogMarginalTracker",
    "RateDistortion",
    "Stream",
    "TrainState",
    "fit",
    "fit_and_evaluate",
    "load_checkpoint",
    "load_parameters",
    "over_seeds",
    "rate_distortion",
    "save_checkpoint",
    "train_step",
]
