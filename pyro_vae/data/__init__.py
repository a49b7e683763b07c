"""Data: bundled digits, IDX files, arrays, synthetic data with known truth, splits.

Nothing here downloads anything.
"""

from pyro_vae.data.arrays import load_array
from pyro_vae.data.binarize import DynamicBinarization, binarize
from pyro_vae.data.dataset import Dataset
from pyro_vae.data.digits import load_digits
from pyro_vae.data.idx import FASHION_MNIST_DIR, load_idx, read_idx
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
    "CountTruth",
    "Dataset",
    "DynamicBinarization",
    "LinearGaussianTruth",
    "Splits",
    "binarize",
    "count_data",
    "count_log_likelihood",
    "hide_labels",
    "linear_gaussian",
    "load_array",
    "load_digits",
    "load_idx",
    "read_idx",
    "split",
]
