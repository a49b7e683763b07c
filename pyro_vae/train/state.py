"""The state of a training run, explicit: what a checkpoint holds and what resumes from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_vae.errors import CheckpointError
from pyro_vae.infer.loss import StatefulLoss
from pyro_vae.train.checkpoint import check_compatible


@dataclass
class TrainState:
    """Everything of a run that changes as it trains, besides the program's parameters and
    the optimizer (which live in their own objects): the epochs and steps done, the history,
    and the random number generators (read and set through :meth:`to_checkpoint` and
    :meth:`restore`).

    :ivar epoch: epochs completed.
    :ivar step: optimizer steps taken.
    :ivar history: one record per completed epoch.
    :ivar epoch_step: steps taken in the current, unfinished epoch (a run stopped by a signal
        resumes there), with each stream's loss total and step count so far.
    """

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_step: int = 0
    epoch_totals: list[float] = field(default_factory=list)
    epoch_counts: list[int] = field(default_factory=list)

    def to_checkpoint(
        self,
        params: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        losses: list[Any],
        *,
        cuda: bool,
    ) -> dict[str, Any]:
        """The checkpoint of the run as it stands (see :func:`~pyro_vae.train.save_checkpoint`)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "params": {k: v.detach().clone() for k, v in params.items()},
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if cuda else None,
            "history": list(self.history),
            "epoch_step": self.epoch_step,
            "epoch_totals": list(self.epoch_totals),
            "epoch_counts": list(self.epoch_counts),
            "loss_state": [loss.state_dict() if isinstance(loss, StatefulLoss) else None for loss in losses],
        }

    @classmethod
    def restore(
        cls,
        checkpoint: dict[str, Any],
        params: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        losses: list[Any],
        *,
        cuda: bool,
        path: Any,
    ) -> TrainState:
        """Copy a checkpoint into the program's parameters, the optimizer, the losses' own
        state and the random number generators, and return the run's state."""
        check_compatible(checkpoint, params, path)
        saved = checkpoint.get("loss_state")
        if not isinstance(saved, list):  # a single loss's state, as version 1 wrote it
            saved = [saved] + [None] * (len(losses) - 1)
        if len(saved) != len(losses):
            raise CheckpointError(
                f"checkpoint {path} holds {len(saved)} losses' state, this run has {len(losses)}"
            )
        with torch.no_grad():
            for name, value in checkpoint["params"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(checkpoint["optimizer"])
        for loss, state in zip(losses, saved, strict=True):
            if state is not None and isinstance(loss, StatefulLoss):
                loss.load_state_dict(state)
        torch.set_rng_state(checkpoint["rng"])
        if cuda and checkpoint.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
        return cls(
            epoch=int(checkpoint["epoch"]),
            step=int(checkpoint["step"]),
            history=list(checkpoint["history"]),
            epoch_step=int(checkpoint.get("epoch_step", 0)),
            epoch_totals=[float(v) for v in checkpoint.get("epoch_totals", [])],
            epoch_counts=[int(v) for v in checkpoint.get("epoch_counts", [])],
        )
