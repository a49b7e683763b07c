"""The five shortfalls a trial of the CLI with adversarial input found: each now ends in one
line naming the problem, exit status 2, and nothing on disk changed."""

import os

import numpy as np
import pytest

from pyro_vae.cli import main

TINY = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet", "--eval-particles", "2"]


def _one_line_error(capsys, args):
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("pyro-vae: error:") and "\n" not in err and "Traceback" not in captured.err
    return err


def _tree(path):
    """Every file below ``path`` with its bytes, for checking that nothing changed."""
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc, a file system that refuses mkdir")
def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    err = _one_line_error(capsys, ["train", "--out", "/proc/pyro-vae-nope", *TINY])
    assert "cannot write the run directory /proc/pyro-vae-nope" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = _one_line_error(capsys, ["train", "--out", str(blocker / "run"), *TINY])
    assert "Not a directory" in err and blocker.read_text() == "x"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: np.random.default_rng(0).bytes(300), "not a checkpoint this library wrote"),
        (lambda b: b"", "damaged or truncated"),
        (lambda b: b[: len(b) // 2], "damaged or truncated"),
    ],
    ids=["random-bytes", "zero-bytes", "truncated"],
)
def test_a_damaged_checkpoint_is_one_line_without_unsafe_advice(run_dir, tmp_path, capsys, damage, reason):
    broken = tmp_path / "run"
    broken.mkdir()
    for p in run_dir.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    ckpt = broken / "checkpoint.pt"
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    before = _tree(broken)
    for args in (["train", "--out", str(broken), "--resume", *TINY], ["evaluate", str(broken), "--quiet"]):
        err = _one_line_error(capsys, args)
        assert "corrupt or unreadable" in err and reason in err and "weights_only` set to `False" not in err
        assert _tree(broken) == before


@pytest.mark.parametrize(("text", "cell"), [("a,b\n1,2\n3,abc\n", "'abc'"), ("1,2\n3,\n", "an empty cell")])
def test_non_numeric_csv_cells_are_named_with_the_file(tmp_path, capsys, text, cell):
    data = tmp_path / "cells.csv"
    data.write_text(text)
    err = _one_line_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY])
    assert f"{data}: not a number at (row 1, column 1): {cell}" in err
    assert not (tmp_path / "run").exists()


def test_the_binarization_follows_the_likelihood_unless_set(tmp_path, capsys):
    assert main(["train", "--likelihood", "gaussian", "--out", str(tmp_path / "g"), *TINY]) == 0
    capsys.readouterr()
    err = _one_line_error(
        capsys,
        [
            "train",
            "--likelihood",
            "gaussian",
            "--binarization",
            "static",
            "--out",
            str(tmp_path / "s"),
            *TINY,
        ],
    )
    assert "binarization applies to the Bernoulli likelihood" in err and not (tmp_path / "s").exists()


@pytest.mark.parametrize(("likelihood", "advice"), [("gaussian", "standardize"), ("poisson", "size factor")])
def test_huge_values_are_caught_before_training_with_advice_that_fits(tmp_path, capsys, likelihood, advice):
    x = np.random.default_rng(0).poisson(3.0, size=(60, 5)).astype(float)
    x[7, 2] = 1e30
    np.save(tmp_path / "huge.npy", x)
    args = ["train", "--data", str(tmp_path / "huge.npy"), "--likelihood", likelihood]
    err = _one_line_error(capsys, [*args, "--out", str(tmp_path / "run"), *TINY])
    assert "values up to 1e+30" in err and advice in err and "learning rate" not in err
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_does_not_claim_a_checkpoint_that_was_never_written(tmp_path):
    import torch

    from pyro_vae.errors import NonFiniteLossError
    from pyro_vae.likelihoods import Bernoulli
    from pyro_vae.models import VAE
    from pyro_vae.train import fit

    vae = VAE(Bernoulli(4), latent_dim=2, hidden=(4,))

    def poison(batch):
        x, *rest = batch
        return (torch.full_like(x, float("nan")), *rest)

    with pytest.raises(NonFiniteLossError) as info:
        fit(
            vae.model,
            vae.guide,
            torch.zeros(8, 4),
            epochs=1,
            checkpoint=tmp_path / "c.pt",
            transform=poison,
            progress=False,
        )
    assert "unchanged" not in str(info.value) and "data's scale" in str(info.value)
