"""Single-cell counts from AnnData ``.h5ad`` files [1], as their users hold them.

Counts come from ``X`` or from a named layer (``layer="counts"``, where a pipeline keeps the
raw counts after normalizing ``X``); a cell covariate comes from a column of ``obs`` (the
batch, or labels such as cell types), as integer codes of its categories. Needs the
optional ``anndata`` package (``pip install pyro-vae[sc]``).

- :func:`load_h5ad`: the whole matrix in memory, as a :class:`~pyro_vae.data.Dataset`.
- :class:`H5adRows`: the file in backed mode, a :class:`~pyro_vae.data.RowSource` that reads
  the rows of a minibatch from disk (dense or CSR-sparse), for data larger than memory.

References:
    [1] Virshup, Rybakov, Theis, Angerer & Wolf (2024), "anndata: access and store annotated
    data matrices", Journal of Open Source Software 9(101), 4371.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.data.dataset import Dataset
from pyro_vae.data.rows import RowSource
from pyro_vae.errors import InputError


def _anndata() -> Any:
    try:
        import anndata
    except ImportError:
        raise InputError(
            "reading .h5ad files needs the anndata package: pip install 'pyro-vae[sc]'"
        ) from None
    return anndata


def _open(path: str | Path, *, backed: bool) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"AnnData file {path} does not exist")
    try:
        return _anndata().read_h5ad(path, backed="r" if backed else None)
    except InputError:
        raise
    except Exception as e:  # h5py, anndata: a file that is not AnnData
        raise InputError(f"cannot read {path} as AnnData (.h5ad): {e}") from e


def _dense(a: Any) -> np.ndarray:
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a)


def _layer_advice(adata: Any) -> str:
    layers = list(adata.layers.keys())
    if "counts" in layers:
        return "pass --layer counts (layer='counts'), where this file keeps its raw counts"
    if layers:
        return f"pass the layer that holds the raw counts with --layer (layer=); this file has {layers}"
    return "this file has no layers: use the raw counts (before normalization or log1p)"


def check_count_matrix(x: np.ndarray, *, where: str, advice: str) -> None:
    """Counts: finite, non-negative integers; otherwise an :class:`InputError` naming the first
    offending entry and ``advice`` (normalized values are the usual cause)."""
    bad = ~np.isfinite(x) | (x < 0) | (x != np.round(x))
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(
            f"{where} holds values that are not counts (non-negative integers), e.g. {x[r, c]:.6g} at "
            f"(cell {r}, gene {c}): normalized or log-transformed values? {advice}"
        )


def _codes(adata: Any, key: str, path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes of the ``obs`` column ``key`` and the names of its categories."""
    if key not in adata.obs.columns:
        raise InputError(f"{path}: no column {key!r} in obs; obs has {list(adata.obs.columns)}")
    column = adata.obs[key]
    if column.isna().any():
        raise InputError(f"{path}: obs column {key!r} has missing values")
    values = column.astype("category")
    return values.cat.codes.to_numpy().astype(np.int64), tuple(str(c) for c in values.cat.categories)


def _element(adata: Any, layer: str | None, path: Path) -> tuple[Any, str]:
    if layer is None:
        return adata.X, f"{path}: X"
    if layer not in adata.layers:
        raise InputError(f"{path}: no layer {layer!r}; layers are {list(adata.layers.keys())}")
    return adata.layers[layer], f"{path}: layer {layer!r}"


def load_h5ad(
    path: str | Path,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    label_key: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Counts of the cells of ``path`` (rows are cells, columns genes) in memory.

    :param layer: the layer holding the counts (``None``: ``X``).
    :param batch_key: an ``obs`` column whose categories become ``y`` (the batch covariate
        of :class:`~pyro_vae.models.ScVI` and of a conditional VAE).
    :param label_key: an ``obs`` column (cell types) that becomes ``y`` when there is no
        ``batch_key`` (for plots and classifiers).
    :raises InputError: a missing file, layer or column, or values that are not counts.
    """
    path = Path(path)
    adata = _open(path, backed=False)
    element, where = _element(adata, layer, path)
    x = _dense(element).astype(np.float64, copy=False)
    if x.ndim != 2 or 0 in x.shape:
        raise InputError(f"{where} must be a non-empty cells x genes matrix, got shape {x.shape}")
    check_count_matrix(x, where=where, advice=_layer_advice(adata) if layer is None else "")
    y, num_classes = None, 0
    key = batch_key if batch_key is not None else label_key
    if key is not None:
        codes, categories = _codes(adata, key, path)
        y, num_classes = torch.as_tensor(codes), len(categories)
    return Dataset(x=torch.as_tensor(x, dtype=dtype), y=y, name=path.stem, num_classes=num_classes)


class H5adRows(RowSource):
    """The counts of an ``.h5ad`` file read from disk a minibatch at a time (AnnData's backed
    mode, and for a layer its on-disk CSR/CSC or dense element), with the codes of an ``obs``
    column as a second array. Memory stays that of one minibatch, whatever the file's size.

    :param layer: the layer holding the counts (``None``: ``X``).
    :param batch_key: an ``obs`` column, returned with each minibatch as integer codes.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        block_size: int = 32,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(block_size=block_size, dtype=dtype)
        self.path = Path(path)
        adata = _open(self.path, backed=True)  # obs and var in memory, X left on disk
        self.num_cells, self.num_genes = (int(v) for v in adata.shape)
        self.layer = layer
        if layer is not None and layer not in adata.layers:
            raise InputError(f"{self.path}: no layer {layer!r}; layers are {list(adata.layers.keys())}")
        self.codes, self.categories = (
            _codes(adata, batch_key, self.path) if batch_key is not None else (None, ())
        )
        self._adata = adata
        self._element = self._on_disk(adata, layer)

    def _on_disk(self, adata: Any, layer: str | None) -> Any:
        if layer is None:
            return adata.X  # backed: an h5py dataset or anndata's on-disk sparse dataset
        import h5py

        group = h5py.File(self.path, "r")["layers"][layer]
        if isinstance(group, h5py.Dataset):
            return group
        return _anndata().io.sparse_dataset(group)

    def __len__(self) -> int:
        return self.num_cells

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, ...]:
        x = _dense(self._element[start:stop])
        return (x,) if self.codes is None else (x, self.codes[start:stop])

    def check_counts(self, *, chunk: int = 4096) -> None:
        """Check every row is counts, ``chunk`` rows at a time (memory stays flat)."""
        for start in range(0, len(self), chunk):
            x = self.read(start, min(start + chunk, len(self)))[0]
            check_count_matrix(
                x.astype(np.float64, copy=False),
                where=f"{self.path}: {'X' if self.layer is None else f'layer {self.layer!r}'} rows {start}+",
                advice=_layer_advice(self._adata) if self.layer is None else "",
            )
