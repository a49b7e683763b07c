"""Rebuild ``celltypist_counts.h5ad`` from celltypist's wheel (run by hand, not by the tests).

    pip download --no-deps celltypist==1.7.1 -d /tmp/wheels
    python tests/data/files/make_celltypist_counts.py /tmp/wheels/celltypist-1.7.1-py3-none-any.whl

Every cell of the sample, the 300 genes with the largest total count; the counts are rounded
(the CSV writes them with float noise, e.g. 0.999999999999999, always within 1e-10 of an
integer) and kept in the layer ``counts``; ``X`` holds what a pipeline leaves there,
log1p of counts normalized to 10,000 per cell.
"""

import sys
import zipfile
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

MEMBER = "celltypist/data/samples/sample_cell_by_gene.csv"
GENES = 300


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as f:
        frame = pd.read_csv(f, index_col=0)
    counts = frame.to_numpy()
    assert np.abs(counts - np.round(counts)).max() < 1e-10
    counts = np.round(counts)
    keep = np.sort(np.argsort(-counts.sum(0), kind="stable")[:GENES])
    counts = counts[:, keep].astype(np.float32)
    normalized = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    adata = anndata.AnnData(
        X=sp.csr_matrix(normalized),
        obs=pd.DataFrame(index=frame.index.astype(str)),
        var=pd.DataFrame(index=frame.columns[keep].astype(str)),
        layers={"counts": sp.csr_matrix(counts)},
    )
    out = Path(__file__).with_name("celltypist_counts.h5ad")
    adata.write_h5ad(out, compression="gzip")
    print(f"{out}: {adata.n_obs} cells x {adata.n_vars} genes, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
