"""Every example script runs, with tiny settings."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")


@pytest.mark.slow
def test_train_digits(tmp_path, monkeypatch, capsys):
    _run("train_digits.py", ["--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"], monkeypatch)
    assert "test ELBO" in capsys.readouterr().out
    assert (tmp_path / "run" / "curves.png").is_file()


@pytest.mark.slow
def test_elbo_gap(tmp_path, monkeypatch, capsys):
    argv = ["--epochs", "1", "--max-k", "20", "--num-points", "10", "--out", str(tmp_path / "run"), "--quiet"]
    _run("elbo_gap.py", argv, monkeypatch)
    assert "ELBO gap" in capsys.readouterr().out
    assert (tmp_path / "run" / "bounds_vs_k.png").is_file()


@pytest.mark.slow
def test_semi_supervised_digits(monkeypatch, capsys):
    _run("semi_supervised_digits.py", ["--epochs", "1", "--labels", "20", "--quiet"], monkeypatch)
    out = capsys.readouterr().out
    assert out.count("test accuracy") == 2


@pytest.mark.slow
def test_gumbel_softmax_table(tmp_path, monkeypatch, capsys):
    _run(
        "gumbel_softmax_table.py",
        ["--epochs", "1", "--seeds", "0", "--grad-samples", "2", "--out", str(tmp_path), "--quiet"],
        monkeypatch,
    )
    out = capsys.readouterr().out
    assert "paper (MNIST)" in out and "101.5" in out
    assert (tmp_path / "categorical" / "seed-0" / "gradient_variance.png").is_file() and (
        tmp_path / "table.json"
    ).is_file()
