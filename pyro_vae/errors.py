"""Errors raised for user mistakes, so that the CLI can print one clear line."""

from __future__ import annotations


class PyroVAEError(Exception):
    """Base class of every error pyro_vae raises on purpose."""


class InputError(PyroVAEError, ValueError):
    """Bad data or bad hyperparameters, detected before any work starts."""


class OutputError(PyroVAEError):
    """A result could not be written (a full disk, no permission); what was there before is
    unchanged."""


class CheckpointError(PyroVAEError):
    """A checkpoint that is corrupt, of another format, or of another model."""


class NonFiniteLossError(PyroVAEError, FloatingPointError):
    """Training produced a NaN or infinite loss.

    :param epoch: the (0-based) epoch in which it happened.
    :param step: the (0-based) optimization step, counted from the start of training.
    """

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class TrainingInterrupted(PyroVAEError):
    """Training stopped on SIGINT or SIGTERM at the end of a step, after writing a checkpoint
    (when it had a path for one) from which ``resume=True`` continues exactly.

    :param epoch: the (0-based) epoch in which it stopped.
    :param step: optimizer steps taken.
    """

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class DistributedError(PyroVAEError):
    """A distributed run lost one of its processes (it died, hung, or exceeded the process
    group's timeout), or could not form its process group."""


class CaptureFallbackWarning(UserWarning):
    """A captured training step (:class:`~pyro_vae.infer.captured.CapturedLoss`) disagreed
    with the eager one, or could not be replayed: that structure runs eagerly from then on."""
