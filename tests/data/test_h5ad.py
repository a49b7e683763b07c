"""AnnData .h5ad counts: X or a layer, obs covariates, the count check, backed reading, and the
committed subset of real counts (tests/data/files/README.md)."""

from pathlib import Path

import numpy as np
import pytest
import torch

anndata = pytest.importorskip("anndata")
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from pyro_vae.data.h5ad import H5adRows, load_h5ad  # noqa: E402
from pyro_vae.errors import InputError  # noqa: E402

REAL = Path(__file__).parent / "files" / "celltypist_counts.h5ad"


def write_cells(
    path: Path, *, cells: int = 40, genes: int = 12, sparse: bool = True, seed: int = 0
) -> np.ndarray:
    """An .h5ad as pipelines leave it: log-normalized X, raw counts in layers['counts'], a batch
    and a cell type in obs. Returns the counts."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(2.0, 2.0, (cells, genes))).astype(np.float32)
    counts[:, 0] += 1  # no empty cell
    normalized = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    store = sp.csr_matrix if sparse else np.asarray
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(np.where(np.arange(cells) % 3 == 0, "b", "a")),
            "cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], cells)),
        },
        index=[f"cell{i}" for i in range(cells)],
    )
    adata = anndata.AnnData(X=store(normalized), obs=obs, layers={"counts": store(counts)})
    adata.write_h5ad(path, compression="gzip")
    return counts


@pytest.mark.parametrize("sparse", [True, False])
def test_counts_from_a_layer_and_covariates_from_obs(tmp_path, sparse):
    counts = write_cells(tmp_path / "cells.h5ad", sparse=sparse)
    d = load_h5ad(tmp_path / "cells.h5ad", layer="counts", batch_key="batch")
    np.testing.assert_array_equal(d.x.numpy(), counts)
    assert d.y.tolist() == [1 if i % 3 == 0 else 0 for i in range(40)] and d.num_classes == 2
    labels = load_h5ad(tmp_path / "cells.h5ad", layer="counts", label_key="cell_type")
    assert labels.num_classes == 3 and labels.y.dtype == torch.int64


def test_normalized_x_is_refused_with_the_layer_to_pass(tmp_path):
    write_cells(tmp_path / "cells.h5ad")
    with pytest.raises(InputError, match=r"X holds values that are not counts.*pass --layer counts"):
        load_h5ad(tmp_path / "cells.h5ad")
    with pytest.raises(InputError, match=r"no layer 'raw'; layers are \['counts'\]"):
        load_h5ad(tmp_path / "cells.h5ad", layer="raw")
    with pytest.raises(InputError, match=r"no column 'sample' in obs; obs has \['batch', 'cell_type'\]"):
        load_h5ad(tmp_path / "cells.h5ad", layer="counts", batch_key="sample")
    with pytest.raises(InputError, match="does not exist"):
        load_h5ad(tmp_path / "missing.h5ad")
    (tmp_path / "bad.h5ad").write_text("not hdf5")
    with pytest.raises(InputError, match="cannot read"):
        load_h5ad(tmp_path / "bad.h5ad")


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("layer", [None, "counts"])
def test_backed_rows_equal_the_in_memory_rows(tmp_path, sparse, layer):
    write_cells(tmp_path / "cells.h5ad", sparse=sparse)
    rows = H5adRows(tmp_path / "cells.h5ad", layer=layer, batch_key="batch", block_size=4)
    memory = anndata.read_h5ad(tmp_path / "cells.h5ad")
    element = memory.X if layer is None else memory.layers[layer]
    full = torch.as_tensor(element.toarray() if sparse else element)
    index = torch.tensor([7, 3, 4, 5, 39, 7, 0])
    x, batch = rows.take(index)
    torch.testing.assert_close(x, full[index])
    assert batch.tolist() == [1 if int(i) % 3 == 0 else 0 for i in index]
    assert len(rows) == 40 and rows.num_classes == 2
    if layer is None:
        with pytest.raises(InputError, match="not counts"):
            rows.check_counts(chunk=16)
    else:
        rows.check_counts(chunk=16)


def test_the_committed_real_counts():
    """559 real cells x 300 genes (celltypist's sample, see files/README.md): integer counts in
    the layer, log-normalized X refused, every cell with counts."""
    d = load_h5ad(REAL, layer="counts")
    assert d.x.shape == (559, 300)
    assert torch.equal(d.x, d.x.round()) and (d.x >= 0).all() and (d.x.sum(1) > 0).all()
    assert 0.5 < (d.x > 0).float().mean() < 0.9  # the most expressed genes of real cells
    with pytest.raises(InputError, match="--layer counts"):
        load_h5ad(REAL)
    assert REAL.stat().st_size < 600_000
