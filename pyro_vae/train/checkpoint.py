"""Training checkpoints: parameters, optimizer, RNG state and history, written atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae._io import BackgroundWrites, atomic_torch_save, torch_bytes
from pyro_vae.errors import CheckpointError
from pyro_vae.infer.particles import probing, record

FORMAT = "pyro_vae.checkpoint"
VERSION = 1


def save_checkpoint(
    path: str | Path, state: dict[str, Any], *, writes: BackgroundWrites | None = None
) -> Path:
    """Write ``state`` (see :func:`pyro_vae.train.fit`) to ``path`` via a temp file and rename;
    with ``writes``, ``state`` is serialized now and written in the background
    (:class:`~pyro_vae._io.BackgroundWrites`: ``writes.wait()`` until it is on disk)."""
    saved = {"format": FORMAT, "version": VERSION, **state}
    if writes is None:
        return atomic_torch_save(path, saved)
    writes.submit(path, torch_bytes(saved))
    return Path(path)


def load_checkpoint(path: str | Path, *, map_location: torch.device | str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`CheckpointError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({_reason(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyro_vae checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, expected {VERSION}")
    return state


def _reason(error: Exception) -> str:
    """One line on why ``torch.load`` failed, without its advice to load unsafely."""
    text = str(error)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    if isinstance(error, EOFError | OSError) or "PytorchStreamReader" in text:
        return f"damaged or truncated: {first}"
    return "not a checkpoint this library wrote; it is only read with weights_only=True"


def check_compatible(state: dict[str, Any], params: dict[str, torch.Tensor], path: str | Path) -> None:
    """The checkpoint's parameter names and shapes must equal the model's."""
    saved = {k: tuple(v.shape) for k, v in state["params"].items()}
    current = {k: tuple(v.shape) for k, v in params.items()}
    if saved == current:
        return
    missing = sorted(set(current) - set(saved))
    extra = sorted(set(saved) - set(current))
    shapes = sorted(k for k in set(saved) & set(current) if saved[k] != current[k])
    parts = []
    if missing:
        parts.append(f"missing parameters {missing[:4]}")
    if extra:
        parts.append(f"unknown parameters {extra[:4]}")
    if shapes:
        parts.append("shape mismatch " + ", ".join(f"{k}: {saved[k]} vs {current[k]}" for k in shapes[:4]))
    raise CheckpointError(f"checkpoint {path} does not match this model: " + "; ".join(parts))


@torch.no_grad()
def load_parameters(
    model: Callable, guide: Callable, path: str | Path, *args: torch.Tensor, **kwargs: Any
) -> dict[str, Any]:
    """Copy a checkpoint's parameters into a program's parameters, in place.

    The program is run once on ``args`` (modules in eval mode, random number generators
    forked) inside a private parameter store to find its
    parameters (``pyro.module`` weights are the modules' own tensors, so the modules end up
    holding the checkpoint's values; the global store is left untouched). Names and shapes
    must match, else :class:`CheckpointError`. Returns the checkpoint.
    """
    store = pyro.get_param_store()
    with store.scope():
        with probing(args, gradients=True):
            record(model, guide, args, kwargs)
        params = dict(store.named_parameters())
        state = load_checkpoint(path, map_location=args[0].device if args else None)
        check_compatible(state, params, path)
        for name, value in state["params"].items():
            params[name].copy_(value)
    return state
