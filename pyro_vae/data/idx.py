"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzipped)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from pyro_vae.data.binarize import binarize as _binarize
from pyro_vae.data.dataset import Dataset
from pyro_vae.errors import InputError

#: where Debian's ``dataset-fashion-mnist`` package installs the files
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file: 2 zero bytes, a type code, the number of dimensions, the
    dimensions as big-endian int32, then the values in C order [1].

    References:
        [1] LeCun, Cortes & Burges, "The MNIST database of handwritten digits" (file format).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise InputError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">i4"))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise InputError(
            f"{path}: expected {expected} bytes of data for shape {shape}, found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise InputError(f"no {stem}[.gz] in {directory}")


def load_idx(
    directory: str | Path,
    *,
    split: str = "train",
    name: str | None = None,
    binarize: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """MNIST-style images and labels from ``directory`` (``train-*`` or ``t10k-*`` files;
    ``split="all"``: both, training images first, 70,000 for (Fashion-)MNIST).

    Pixels are scaled to [0, 1] and flattened; ``binarize=True`` binarizes statically.
    For Fashion-MNIST from Debian's package, pass :data:`FASHION_MNIST_DIR`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"IDX directory {directory} does not exist")
    if split == "all":
        parts = [load_idx(directory, split=s, name=name, dtype=dtype) for s in ("train", "test")]
        x = torch.cat([p.x for p in parts])
        return Dataset(
            x=_binarize(x, seed=seed) if binarize else x,
            y=torch.cat([p.y for p in parts]),  # type: ignore[misc]
            name=parts[0].name,
            image_shape=parts[0].image_shape,
            num_classes=max(p.num_classes for p in parts),
        )
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise InputError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(f"{directory}: images {images.shape} and labels {labels.shape} do not match")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    x = torch.as_tensor(images.reshape(len(images), -1)).to(dtype).div_(scale)  # one float copy
    if binarize:
        x = _binarize(x, seed=seed)
    y = torch.as_tensor(labels.astype(np.int64))
    return Dataset(
        x=x,
        y=y,
        name=name or directory.name,
        image_shape=tuple(images.shape[1:]),
        num_classes=int(y.max()) + 1,
    )
