"""Adversarial input to the pyro-vae commands: each case ends in exit status 2, one line that
names the problem, no traceback, and every file on disk exactly as it was."""

import shutil
import struct

import numpy as np
import pytest

from pyro_vae.cli import main

TINY = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet", "--eval-particles", "2"]
TRAIN = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--eval-particles", "2"]
COMPARE = [
    "--variables",
    "2",
    "--categories",
    "3",
    "--epochs",
    "1",
    "--grad-samples",
    "3",
    "--grad-batch",
    "8",
    "--warmup",
    "0",
    "--eval-particles",
    "2",
    "--quiet",
]


def _idx(path, array):
    code = {np.uint8: 0x08, np.float32: 0x0D}[array.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad data files, and two trained runs of different models (for a foreign checkpoint)."""
    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    good = rng.random((60, 5))
    (d / "nan.csv").write_text(
        "\n".join(",".join(str(v) for v in row) for row in np.where(good > 0.95, np.nan, good))
    )
    np.save(d / "inf.npy", np.where(good > 0.9, np.inf, good))
    np.savez(d / "nan.npz", x=np.where(good > 0.9, np.nan, good))
    np.save(d / "one_d.npy", good[:, 0])
    np.savez(d / "labels.npz", x=good, y=np.zeros(59))
    np.save(d / "negative.npy", rng.poisson(3.0, (60, 5)) - 4.0)
    np.save(d / "fractional.npy", rng.poisson(3.0, (60, 5)) + 0.5)
    np.save(d / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(d / "pickled.npy", np.array([[{"not": "data"}, None]], dtype=object), allow_pickle=True)
    idx = d / "idx"
    idx.mkdir()
    _idx(idx / "train-images-idx3-ubyte", rng.integers(0, 255, (20, 4, 4)).astype(np.uint8))
    (idx / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00")  # truncated header
    fidx = d / "fidx"
    fidx.mkdir()
    img = rng.random((20, 4, 4)).astype(np.float32)
    img[3, 1, 1] = np.nan
    _idx(fidx / "train-images-idx3-ubyte", img)
    _idx(fidx / "train-labels-idx1-ubyte", np.zeros(20, dtype=np.uint8))
    assert main(["train", "--out", str(d / "run_a"), *TINY]) == 0
    assert main(["train", "--out", str(d / "run_b"), *TINY[:2], "--hidden", "12", *TINY[4:]]) == 0
    return d


def _cases(d):
    run_a, run_b = d / "run_a", d / "run_b"
    return {
        # data
        "nan in csv": (["train", "--data", f"{d}/nan.csv"], "non-finite values (NaN or inf) at (row"),
        "inf in npy": (["train", "--data", f"{d}/inf.npy", "--likelihood", "gaussian"], "non-finite values"),
        "nan in npz": (["train", "--data", f"{d}/nan.npz", "--likelihood", "gaussian"], "non-finite values"),
        "nan in idx": (["train", "--data", f"{d}/fidx", "--likelihood", "gaussian"], "non-finite values"),
        "truncated idx": (["train", "--data", f"{d}/idx"], "idx"),
        "1-D array": (["train", "--data", f"{d}/one_d.npy"], "must be 2-D"),
        "labels of the wrong length": (
            ["train", "--data", f"{d}/labels.npz", "--conditional"],
            "60 rows but 59 labels",
        ),
        "negative counts": (
            ["train", "--data", f"{d}/negative.npy", "--likelihood", "poisson"],
            "negative values",
        ),
        "fractional counts": (
            ["train", "--data", f"{d}/fractional.npy", "--likelihood", "nb"],
            "non-integer",
        ),
        "non-numeric array": (["train", "--data", f"{d}/strings.npy"], "numeric"),
        "pickled objects in npy": (["train", "--data", f"{d}/pickled.npy"], "allow_pickle=False"),
        "missing file": (["train", "--data", f"{d}/absent.npy"], "does not exist"),
        "unknown format": (["train", "--data", f"{d}/run_a/config.json"], "unknown data format"),
        # hyperparameters
        "latent dim 0": (["train", "--latent-dim", "0"], "latent dim"),
        "hidden width 0": (["train", "--hidden", "0"], "hidden width"),
        "hidden not integers": (
            ["train", "--hidden", "a,b"],
            "hidden sizes must be comma-separated integers",
        ),
        "negative beta": (["train", "--beta", "-1"], "beta"),
        "learning rate nan": (["train", "--lr", "nan"], "learning rate"),
        "zero epochs": (["train", "--epochs", "0"], "epochs"),
        "batch size 0": (["train", "--batch-size", "0"], "batch size"),
        "eval particles 0": (["train", "--eval-particles", "0"], "eval particles"),
        "K of 0 in evaluate": (["evaluate", str(run_a), "--ks", "0"], "K must be"),
        "temperature 0": (["compare", "--min-temperature", "0"], "minimum temperature"),
        "vimco with one particle": (["compare", "--estimators", "vimco", "--particles", "1"], "vimco needs"),
        # names
        "unknown likelihood": (["train", "--likelihood", "cauchy"], "invalid choice"),
        "unknown estimator": (["compare", "--estimators", "reinforce++"], "unknown estimator"),
        "estimator that does not apply": (
            ["compare", "--estimators", "arm"],
            "arm estimator is for Bernoulli",
        ),
        "enum on a huge code": (
            ["compare", "--estimators", "enum", "--variables", "20"],
            "enum sums over every code",
        ),
        # checkpoints and run directories
        "checkpoint of another model": (
            ["train", "--out", "FOREIGN", "--resume", *TINY],
            "does not match this model",
        ),
        "out is an existing file": (["train", "--out", f"{run_a}/config.json"], "already exists"),
        "out is a non-empty directory": (["train", "--out", str(run_a)], "already exists and is not empty"),
        "resume with nothing to resume": (["train", "--out", f"{d}/nowhere", "--resume"], "cannot resume"),
        "resume without out": (["train", "--resume"], "--resume needs --out"),
        "evaluate a deleted checkpoint": (["evaluate", "NOCKPT", "--quiet"], "no checkpoint"),
        "evaluate a directory that is not a run": (
            ["evaluate", str(d / "idx"), "--quiet"],
            "not a run directory",
        ),
        "unknown command": (["frobnicate"], "invalid choice"),
    }, run_b


def _with_defaults(args, defaults, out):
    """``args`` plus ``--out`` and every default option it does not set itself."""
    given = {a for a in args if a.startswith("--")}
    own_out = "--out" in given or "--resume" in given or args[0] not in ("train", "compare")
    extra = [] if own_out else ["--out", str(out)]
    for i in range(0, len(defaults), 2):
        if defaults[i] not in given:
            extra += defaults[i : i + 2]
    return [*args, *extra, "--quiet"] if args[0] in ("train", "compare") else args


@pytest.mark.slow
def test_every_adversarial_case_is_one_line_and_changes_nothing(files, tmp_path, capsys):
    cases, run_b = _cases(files)
    foreign = tmp_path / "foreign"
    shutil.copytree(files / "run_a", foreign)
    shutil.copy(run_b / "checkpoint.pt", foreign / "checkpoint.pt")
    no_ckpt = tmp_path / "no_ckpt"
    shutil.copytree(files / "run_a", no_ckpt)
    (no_ckpt / "checkpoint.pt").unlink()
    failures = []
    for k, (name, (args, message)) in enumerate(cases.items()):
        args = [str(foreign) if a == "FOREIGN" else str(no_ckpt) if a == "NOCKPT" else a for a in args]
        out = tmp_path / f"out-{k}"
        defaults = TRAIN if args[0] == "train" else COMPARE
        args = _with_defaults(args, [] if "--resume" in args else defaults, out)
        before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
        before_files = {p: p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        code = main(args)
        err = capsys.readouterr().err.strip()
        after = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
        after_files = {p: p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        ok = (
            code == 2
            and "\n" not in err
            and "Traceback" not in err
            and message in err
            and after == before
            and after_files == before_files
            and not out.exists()
        )
        if not ok:
            failures.append((name, code, err))
    assert len(cases) >= 35
    assert not failures, failures


def test_a_huge_k_is_chunked_with_flat_memory():
    """L_K with K = 3 x 10^6 for one 64-pixel datapoint: all at once that is 3 x 10^6 x 64
    floats per tensor (0.77 GB each, several of them); chunked it stays in a small working set."""
    import resource

    import torch

    from pyro_vae.bounds import iwae
    from pyro_vae.likelihoods import Bernoulli
    from pyro_vae.models import VAE

    torch.manual_seed(0)
    vae = VAE(Bernoulli(64), latent_dim=2, hidden=(8,))
    x = (torch.rand(1, 64) < 0.3).float()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    estimate = iwae(vae.model, vae.guide, x, num_particles=3_000_000, return_error=True)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert torch.isfinite(estimate.value).all() and estimate.standard_error.item() < 0.01
    assert grown_mib < 500, grown_mib


@pytest.mark.parametrize("dtype", ["float16", "float64", "int64", "bool", "uint8"])
def test_binary_data_of_every_dtype_trains(tmp_path, dtype, capsys):
    x = (np.random.default_rng(1).random((40, 6)) < 0.3).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    assert main(["train", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"), *TINY]) == 0
    assert "test ELBO" in capsys.readouterr().out


def test_m2_labels_out_of_range_are_named_with_their_rows():
    import torch

    from pyro_vae.errors import InputError
    from pyro_vae.likelihoods import Bernoulli
    from pyro_vae.models import M2

    m2 = M2(Bernoulli(4), num_classes=3, latent_dim=2, hidden=(4,), classifier_hidden=(4,))
    with pytest.raises(InputError, match=r"out of range at rows \[1, 3\]"):
        m2.validate_data(torch.zeros(4, 4), torch.tensor([0, 3, -1, -2]))
