"""Every example script runs, with tiny settings."""

import json
import math
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


# the rows the example's table must have: one per (model, estimator) it compares
TABLE_ROWS = {
    "categorical": ["score", "score-avg", "nvil", "vimco", "st-gumbel", "gumbel"],
    "bernoulli": ["score", "score-avg", "nvil", "vimco", "arm", "st-gumbel", "gumbel"],
}


def _held_out_independent_pixel_nats() -> tuple[float, int]:
    """Held-out cross-entropy (nats per image) of independent Bernoulli pixels fitted to the
    training split of the data the example uses (binarized digits, seed 0), and the number
    of pixels."""
    from pyro_vae.data import load_digits, split

    splits = split(load_digits(binarize=True, seed=0), val_fraction=0.1, test_fraction=0.1, seed=0)
    p = splits.train.x.double().mean(0).clamp(1e-3, 1 - 1e-3)
    x = splits.val.x.double()
    return -(x * p.log() + (1 - x) * (1 - p).log()).sum(-1).mean().item(), x.shape[1]


@pytest.mark.slow
def test_gumbel_softmax_table(tmp_path, monkeypatch, capsys):
    _run(
        "gumbel_softmax_table.py",
        ["--epochs", "1", "--seeds", "0", "--grad-samples", "2", "--out", str(tmp_path), "--quiet"],
        monkeypatch,
    )
    out = capsys.readouterr().out
    assert (tmp_path / "categorical" / "seed-0" / "gradient_variance.png").is_file()
    rows = json.loads((tmp_path / "table.json").read_text())
    assert [(r["model"], r["estimator"]) for r in rows] == [
        (model, name) for model, names in TABLE_ROWS.items() for name in names
    ]
    # Plausible range of a held-out negative ELBO (nats per 8x8 image) after one epoch, from
    # the data: above half the held-out cross-entropy of independent pixels fitted to the
    # training split (-ELBO >= -log p(x) > 0; a 15-step model cannot compress far below
    # that), and below a coin-flip decoder (D log 2) plus the largest possible KL to the
    # uniform prior (20 log 10 for 20 ten-way variables, 200 log 2 for 200 bits).
    independent, num_pixels = _held_out_independent_pixel_nats()
    capacity = {"categorical": 20 * math.log(10), "bernoulli": 200 * math.log(2)}
    score = {r["model"]: r["neg_elbo"] for r in rows if r["estimator"] == "score"}
    for r in rows:
        name = (r["model"], r["estimator"])
        assert math.isfinite(r["neg_elbo"]) and r["per_seed"] == [r["neg_elbo"]], name
        assert 0.5 * independent < r["neg_elbo"] < num_pixels * math.log(2) + capacity[r["model"]], name
        # the paired difference from the score function, with one seed: a plain difference
        assert r["minus_score"] == pytest.approx(r["neg_elbo"] - score[r["model"]], abs=1e-4), name
        assert math.isfinite(r["guide_grad_variance"]) and r["guide_grad_variance"] > 0, name
        assert f"{r['neg_elbo']:>8.3f}" in out, name
    # the relaxed estimators' encoder gradients are far less noisy than the score function's
    variance = {(r["model"], r["estimator"]): r["guide_grad_variance"] for r in rows}
    for model in TABLE_ROWS:
        assert variance[model, "gumbel"] < variance[model, "score"], model
    assert (tmp_path / "table.txt").read_text().strip() == out.strip()


def test_missing_digits(tmp_path, monkeypatch, capsys):
    argv = ["--epochs", "1", "--hidden", "16", "--particles", "20", "--samples", "4", "--num-test", "10"]
    _run("missing_digits.py", [*argv, "--out", str(tmp_path / "run"), "--quiet"], monkeypatch)
    out = capsys.readouterr().out
    assert "imputation (SNIS mean)" in out and "ESS of the weights" in out
    assert (tmp_path / "run" / "imputations.png").is_file()
    summary = json.loads((tmp_path / "run" / "imputation.json").read_text())
    assert 1 <= summary["ess_min"] <= summary["ess_median"] <= 20


def test_reproductions(tmp_path, monkeypatch, capsys):
    """The three tables on digits with tiny settings: every row of each table, per-seed runs
    shared between tables that have the same configuration and reused by a second call,
    L_K >= ELBO in each row (K = 20), an active-unit count per stochastic layer."""
    argv = [
        "--data",
        "digits",
        "--seeds",
        "0,1",
        "--train-size",
        "100",
        "--test-points",
        "10",
        "--epochs",
        "1",
    ]
    argv += [
        "--batch-size",
        "50",
        "--k",
        "20",
        "--active-unit-samples",
        "5",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    _run("reproductions.py", argv, monkeypatch)
    out = capsys.readouterr().out
    rows = {
        name: json.loads((tmp_path / f"{name}.json").read_text())["rows"] for name in ("iwae", "vamp", "iaf")
    }
    assert [r["table_row"] for r in rows["iwae"]] == [
        "1 layer, k=1",
        "1 layer, k=5",
        "2 layers, k=1",
        "2 layers, k=5",
    ]
    assert [r["table_row"] for r in rows["vamp"]] == ["standard normal", "mixture of Gaussians", "VampPrior"]
    assert [r["table_row"] for r in rows["iaf"]] == ["diagonal Gaussian", "IAF"]
    for table in rows.values():
        for r in table:
            assert r["num_seeds"] == 2 and r["log_marginal"] >= r["elbo"], r
            assert r["table_row"] in out
    assert (
        rows["vamp"][0]["log_marginal"] == rows["iaf"][0]["log_marginal"] == rows["iwae"][0]["log_marginal"]
    )
    assert {"active_z1", "active_z2"} <= set(rows["iwae"][2]) and "active_z" in rows["iwae"][0]
    assert (tmp_path / "iwae.csv").read_text().startswith("table_row,")
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 7 * 2  # seven distinct configurations, two seeds
    stamps = [p.stat().st_mtime_ns for p in runs]
    _run("reproductions.py", [*argv[:-3], "--table", "iaf", "--out", str(tmp_path), "--quiet"], monkeypatch)
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    # --collect-only tabulates what is on disk and trains nothing: a removed run is reported missing
    (tmp_path / "runs" / "layers1-k1-standard-iaf-seed1.json").unlink()
    capsys.readouterr()
    _run(
        "reproductions.py",
        [*argv[:-3], "--table", "iaf", "--collect-only", "--out", str(tmp_path)],
        monkeypatch,
    )
    assert "missing runs: IAF: seeds [1]" in capsys.readouterr().out
    iaf = json.loads((tmp_path / "iaf.json").read_text())["rows"]
    assert [r["num_seeds"] for r in iaf] == [2, 1] and iaf[1]["seeds"] == "0"
    assert not (tmp_path / "runs" / "layers1-k1-standard-iaf-seed1.json").exists()
