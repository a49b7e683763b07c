"""Data from .npy, .npz and CSV files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from pyro_vae.data.dataset import Dataset
from pyro_vae.errors import InputError


def _labels(y: np.ndarray, path: Path) -> torch.Tensor:
    if y.ndim != 1:
        raise InputError(f"{path}: labels must be 1-D, got shape {y.shape}")
    if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)) or (y < 0).any():
        raise InputError(f"{path}: labels must be non-negative integers")
    return torch.as_tensor(y.astype(np.int64))


def load_array(
    path: str | Path,
    *,
    label_column: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load a data matrix (rows are datapoints).

    - ``.npy``: one 2-D array.
    - ``.npz``: array ``x`` (or the only array), with optional integer labels ``y``.
    - ``.csv``: comma-separated numbers; a first row that is not numeric is a header.
      ``label_column`` (an index; negative counts from the end) moves a column into the labels.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    y = None
    try:
        if suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if "x" in archive:
                    x = archive["x"]
                elif len(keys) == 1:
                    x = archive[keys[0]]
                else:
                    raise InputError(f"{path}: .npz needs an array named 'x' (found {keys})")
                y = archive["y"] if "y" in archive else None
        elif suffix == ".csv":
            x = _read_csv(path)
        else:
            raise InputError(f"{path}: unknown data format {suffix!r} (use .npy, .npz or .csv)")
    except (ValueError, OSError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"cannot read {path}: {e}") from e
    if x.ndim != 2:
        raise InputError(f"{path}: data must be 2-D (datapoints x features), got shape {x.shape}")
    if x.dtype == np.bool_:  # binary data: 0/1
        x = x.astype(np.float64)
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{path}: data must be numeric, got dtype {x.dtype}")
    if label_column is not None:
        if not -x.shape[1] <= label_column < x.shape[1]:
            raise InputError(f"{path}: label column {label_column} out of range for {x.shape[1]} columns")
        y = x[:, label_column]
        x = np.delete(x, label_column % x.shape[1], axis=1)
    labels = None if y is None else _labels(np.asarray(y), path)
    if labels is not None and len(labels) != len(x):
        raise InputError(f"{path}: {len(x)} rows but {len(labels)} labels")
    return Dataset(
        x=torch.as_tensor(x.astype(np.float64), dtype=dtype),
        y=labels,
        name=path.stem,
        num_classes=int(labels.max()) + 1 if labels is not None and len(labels) else 0,
    )


def _read_csv(path: Path) -> np.ndarray:
    with open(path) as f:
        first = f.readline()
    try:
        [float(v) for v in first.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # numpy warns on an empty file; we raise instead
        rows = np.genfromtxt(path, delimiter=",", skip_header=skip, dtype=np.float64, ndmin=2)
    if rows.size == 0:
        raise InputError(f"{path} has no data rows")
    _check_numeric_cells(path, rows, skip)
    return rows


def _check_numeric_cells(path: Path, rows: np.ndarray, skip: int) -> None:
    """NaN where a cell did not parse as a number: name the first such cell (an explicit
    ``nan`` in the file is left to the finiteness check, which names it as NaN)."""
    bad = np.argwhere(np.isnan(rows))
    if not len(bad):
        return
    with open(path) as f:
        lines = f.read().splitlines()[skip:]
    for r, c in bad[:1000]:
        cells = lines[r].split(",") if r < len(lines) else []
        cell = cells[c].strip() if c < len(cells) else ""
        try:
            float(cell)
        except ValueError:
            shown = repr(cell) if cell else "an empty cell"
            raise InputError(
                f"{path}: not a number at (row {r}, column {c}): {shown}; every cell after an optional "
                "header row must be a number"
            ) from None
