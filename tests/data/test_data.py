"""Data loading: digits, IDX, arrays, synthetic truth, splits, binarization."""

import gzip
import struct

import numpy as np
import pytest
import torch

from pyro_vae.data import (
    FASHION_MNIST_DIR,
    DynamicBinarization,
    binarize,
    count_data,
    linear_gaussian,
    load_array,
    load_digits,
    load_idx,
    read_idx,
    split,
)
from pyro_vae.errors import InputError
from tests.conftest import standard_error


def test_digits_are_scaled_and_labelled():
    d = load_digits()
    assert d.x.shape == (1797, 64) and d.image_shape == (8, 8) and d.num_classes == 10
    assert d.x.min() == 0 and d.x.max() == 1
    assert set(d.y.unique().tolist()) == set(range(10))
    b = load_digits(binarize=True, seed=1)
    assert set(b.x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(b.x, load_digits(binarize=True, seed=1).x)
    assert not torch.equal(b.x, load_digits(binarize=True, seed=2).x)


def test_digits_are_scikit_learns_read_without_importing_it(monkeypatch):
    """The file scikit-learn ships, read as its ``load_digits`` reads it: the same pixels and
    labels, in a process that never imports scikit-learn (0.83 s with SciPy); its loader
    where the file is not found."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sk_load_digits

    from pyro_vae.data import digits

    raw = sk_load_digits()
    d = load_digits(dtype=torch.float64)
    assert torch.equal(d.x, torch.as_tensor(raw.data) / 16.0)
    assert torch.equal(d.y, torch.as_tensor(raw.target))
    code = "import sys; from pyro_vae.data import load_digits; load_digits(); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr

    class Elsewhere:  # a scikit-learn laid out otherwise: its own loader
        submodule_search_locations = ("/nonexistent",)

    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: Elsewhere())
    assert torch.equal(load_digits(dtype=torch.float64).x, d.x)
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install scikit-learn"):
        load_digits()


def test_static_binarization_has_the_right_mean_and_dynamic_redraws():
    p = torch.full((20000, 1), 0.3, dtype=torch.float64)
    b = binarize(p, seed=0)
    assert abs(b.mean() - 0.3) < 4 * (0.3 * 0.7 / 20000) ** 0.5
    torch.manual_seed(0)
    first, second = DynamicBinarization()((p[:100],))[0], DynamicBinarization()((p[:100],))[0]
    assert not torch.equal(first, second)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        binarize(p + 1)


def test_splits_are_disjoint_complete_and_reproducible():
    d = load_digits()
    s = split(d, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert (len(s.train), len(s.val), len(s.test)) == (1258, 359, 180)
    rows = torch.cat([s.train.x, s.val.x, s.test.x])
    assert torch.equal(rows.sum(0), d.x.sum(0))
    assert torch.equal(split(d, val_fraction=0.2, test_fraction=0.1, seed=4).val.x, s.val.x)
    assert not torch.equal(split(d, val_fraction=0.2, test_fraction=0.1, seed=5).val.x, s.val.x)
    with pytest.raises(InputError, match="too few"):
        split(d.subset(torch.arange(3)), val_fraction=0.1, test_fraction=0.1)


def _write_idx(path, array, gz=False):
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[array.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + body)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    labels = np.array([3, 1], dtype=np.uint8)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    d = load_idx(tmp_path)
    assert d.image_shape == (3, 4) and d.y.tolist() == [3, 1]
    torch.testing.assert_close(d.x[1], torch.tensor(images[1].ravel() / 255.0, dtype=torch.float32))
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    _write_idx(tmp_path / "f.idx", floats)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(InputError, match="magic"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((2, 2), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(InputError, match="expected 4 bytes"):
        read_idx(tmp_path / "short")
    with pytest.raises(InputError, match="no train-images"):
        load_idx(tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package():
    d = load_idx(FASHION_MNIST_DIR, split="test")
    assert d.x.shape == (10000, 784) and d.num_classes == 10 and d.image_shape == (28, 28)


def test_arrays_from_npy_npz_and_csv(tmp_path):
    x = np.arange(12, dtype=float).reshape(4, 3)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x=x, y=np.array([0, 1, 1, 2]))
    (tmp_path / "c.csv").write_text(
        "f1,f2,f3,label\n" + "\n".join(f"{r[0]},{r[1]},{r[2]},{i % 2}" for i, r in enumerate(x))
    )
    np.testing.assert_array_equal(load_array(tmp_path / "a.npy").x.numpy(), x)
    b = load_array(tmp_path / "b.npz")
    assert b.y.tolist() == [0, 1, 1, 2] and b.num_classes == 3
    c = load_array(tmp_path / "c.csv", label_column=-1)
    np.testing.assert_array_equal(c.x.numpy(), x)
    assert c.y.tolist() == [0, 1, 0, 1]


def test_array_errors_name_the_problem(tmp_path):
    (tmp_path / "nan.csv").write_text("1,2\n3,nan\n")
    with pytest.raises(InputError, match=r"non-finite.*\(row 1, column 1\)"):
        load_array(tmp_path / "nan.csv")
    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="no data rows"):
        load_array(tmp_path / "empty.csv")
    np.save(tmp_path / "three.npy", np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="2-D"):
        load_array(tmp_path / "three.npy")
    with pytest.raises(InputError, match="does not exist"):
        load_array(tmp_path / "missing.npy")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(InputError, match="unknown data format"):
        load_array(tmp_path / "x.txt")


def test_linear_gaussian_data_has_the_true_covariance():
    data, truth = linear_gaussian(20000, 3, 2, seed=0)
    cov = truth.marginal().covariance_matrix
    emp = torch.cov(data.x.T)
    # SE of a sample covariance entry: sqrt((S_ij^2 + S_ii S_jj) / n)
    se = ((cov**2 + torch.outer(cov.diag(), cov.diag())) / 20000).sqrt()
    assert ((emp - cov).abs() < 4 * se).all()


@pytest.mark.parametrize("gate", [0.0, 0.3])
def test_count_data_follow_the_known_nb_and_zinb_laws(gate):
    data, truth = count_data(4000, 5, 2, gate=gate, seed=1, dtype=torch.float64)
    mu, theta = truth.mean, truth.inverse_dispersion
    mean = (1 - gate) * mu
    var = (1 - gate) * (mu + mu**2 / theta) + gate * (1 - gate) * mu**2
    # standardized residuals (x - E x) / sd have mean 0 and variance 1 per feature
    r = (data.x - mean) / var.sqrt()
    assert (r.mean(0).abs() < 4 * standard_error(r)).all()
    assert (((r**2).mean(0) - 1).abs() < 4 * standard_error(r**2)).all()
    assert (data.x >= 0).all() and torch.equal(data.x, data.x.round())
