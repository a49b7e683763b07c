"""Small input checks shared across the package; each raises :class:`InputError`."""

from __future__ import annotations

import torch

from pyro_vae.errors import InputError


def _where(mask: torch.Tensor, limit: int = 5) -> str:
    """Describe the first offending (row, column) positions of a 2-D boolean mask."""
    idx = mask.nonzero()
    shown = ", ".join(f"(row {int(i[0])}, column {int(i[1])})" for i in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return shown + more


def check_matrix(x: torch.Tensor, *, name: str = "data") -> None:
    """Check that ``x`` is a non-empty, finite 2-D floating tensor (rows are datapoints)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise InputError(f"{name} must be 2-D (datapoints x features), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty: it has no rows")
    if x.shape[1] == 0:
        raise InputError(f"{name} has no features (0 columns)")
    if not torch.is_floating_point(x):
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    bad = ~torch.isfinite(x)
    if bad.any():
        raise InputError(f"{name} has non-finite values (NaN or inf) at {_where(bad)}")


def check_binary(x: torch.Tensor, *, name: str = "data", allow_probabilities: bool = False) -> None:
    """Bernoulli data: 0/1 values, or values in [0, 1] when probabilities are explicitly allowed."""
    if allow_probabilities:
        bad = (x < 0) | (x > 1)
        if bad.any():
            raise InputError(
                f"{name} must lie in [0, 1] for a Bernoulli likelihood; outside at {_where(bad)}"
            )
    else:
        bad = (x != 0) & (x != 1)
        if bad.any():
            raise InputError(
                f"{name} must be binary (0/1) for a Bernoulli likelihood; non-binary at {_where(bad)}. "
                "Binarize it, or pass allow_probabilities=True (--allow-probabilities) "
                "to use values in [0, 1]"
            )


def check_counts(x: torch.Tensor, *, name: str = "data", likelihood: str = "count") -> None:
    """Count data: non-negative integers."""
    neg = x < 0
    if neg.any():
        raise InputError(
            f"{name} has negative values, invalid for a {likelihood} likelihood, at {_where(neg)}"
        )
    frac = x != torch.round(x)
    if frac.any():
        raise InputError(
            f"{name} has non-integer values, invalid for a {likelihood} likelihood, at {_where(frac)}"
        )


def check_positive_int(value: int, name: str, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_widths(hidden: object, *, allow_empty: bool = False) -> None:
    """Hidden-layer widths: a sequence of integers >= 1 (at least one unless ``allow_empty``)."""
    if not allow_empty and not hidden:
        raise InputError("hidden needs at least one layer width")
    for h in hidden:  # type: ignore[attr-defined]
        check_positive_int(h, "hidden width")


def check_nonnegative(value: float, name: str) -> None:
    if not (isinstance(value, int | float) and value >= 0 and value == value and value != float("inf")):
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")


def check_positive(value: float, name: str) -> None:
    if not (isinstance(value, int | float) and value > 0 and value != float("inf")):
        raise InputError(f"{name} must be a finite number > 0, got {value!r}")


def as_tensors(data: object, name: str) -> tuple:
    """``x`` or ``(x, y, ...)`` as a tuple of the program's positional arguments: ``x`` a finite
    floating matrix (rows are datapoints), every other tensor with one row per datapoint, and
    non-tensor arguments (a configuration object) passed through as they are;
    :class:`InputError` naming what is wrong otherwise."""
    args = (data,) if isinstance(data, torch.Tensor) else tuple(data)  # type: ignore[arg-type]
    if not args or not isinstance(args[0], torch.Tensor):
        raise InputError(f"{name} must be a tensor or a tuple (x, y, ...) whose first entry is a tensor")
    check_matrix(args[0], name=name)
    n = args[0].shape[0]
    for i, t in enumerate(args[1:], 1):
        if isinstance(t, torch.Tensor) and (t.dim() == 0 or t.shape[0] != n):
            raise InputError(f"{name}: tensor {i} has shape {tuple(t.shape)} but x has {n} rows")
    return args


def data_rows(args: tuple) -> int:
    """Datapoints in a program's positional data: the rows of the first argument, which
    must be a tensor with at least one dimension."""
    if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() == 0:
        raise InputError("the first positional argument must be the data tensor (rows are datapoints)")
    return args[0].shape[0]


def check_rows(args: tuple, *, name: str = "data") -> None:
    """The positional data of an evaluation: a first argument that is a tensor with at least
    one row (datapoints along dim 0), and finite where it is floating point."""
    data_rows(args)
    x = args[0]
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty: it has no rows")
    for i, t in enumerate(args):
        if isinstance(t, torch.Tensor) and torch.is_floating_point(t):
            bad = ~torch.isfinite(t)
            if bad.any():
                where = _where(bad.reshape(t.shape[0], -1)) if t.dim() > 0 else "its value"
                raise InputError(f"{name}: argument {i} has non-finite values (NaN or inf) at {where}")
