"""pyro-vae sweep, the train options for free bits and L_K tracking, and the collapse panel of
pyro-vae evaluate, end to end with tiny settings."""

import csv
import json
import math
import subprocess
import sys

import pytest

from pyro_vae.cli import build_parser, main, train_config
from pyro_vae.commands.configs import EvaluateConfig, TrainConfig

TINY = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--eval-particles", "2", "--quiet"]


@pytest.mark.slow
def test_sweep_trains_one_run_per_beta_and_writes_the_table_and_plane(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--beta", "0.5,2", "--out", str(out), "--free-bits", "0.05"]
    assert main([*args, "--track-log-marginal", "5", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "rate" in printed and "distortion" in printed and len(printed.splitlines()) >= 3
    assert {p.name for p in out.iterdir()} >= {
        "beta-0.5",
        "beta-2",
        "sweep.csv",
        "sweep.json",
        "rate_distortion.png",
    }
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [float(r["beta"]) for r in rows] == [0.5, 2.0]
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    for row, run in zip(rows, runs, strict=True):
        summary = json.loads((out / f"beta-{run['beta']:g}" / "summary.json").read_text())
        config = json.loads((out / f"beta-{run['beta']:g}" / "config.json").read_text())
        assert (
            config["beta"] == run["beta"]
            and config["free_bits"] == 0.05
            and config["track_log_marginal"] == 5
        )
        assert float(row["rate"]) == pytest.approx(summary["test_rate"])
        assert float(row["elbo"]) == pytest.approx(-(float(row["rate"]) + float(row["distortion"])), abs=1e-4)
        assert run["rate_se"] > 0 and run["distortion_se"] > 0 and run["elbo_se"] > 0
    assert (out / "rate_distortion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the tracked columns of metrics.csv: L_K and the ELBO of the same draws, L_K above it
    metrics = list(csv.DictReader((out / "beta-0.5" / "metrics.csv").open()))
    assert {"val_lk", "val_lk_se", "val_lk_elbo", "val_lk_gap"} <= set(metrics[0])
    assert float(metrics[0]["val_lk"]) > float(metrics[0]["val_lk_elbo"]) - 4 * float(
        metrics[0]["val_lk_gap_se"]
    )

    # the collapse panel of evaluate on one of the runs
    run_dir = out / "beta-0.5"
    ev = ["evaluate", str(run_dir), "--ks", "1,5", "--num-points", "30", "--gap-points", "0"]
    assert main([*ev, "--elbo-particles", "5", "--surgery-particles", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "I(n; z)" in printed and "KL(q(z) || p(z))" in printed
    panel = json.loads((run_dir / "evaluation.json").read_text())["collapse"]
    assert panel["mutual_information"] + panel["marginal_kl"] == pytest.approx(panel["average_kl"], abs=1e-4)
    assert panel["mutual_information"] <= math.log(30) + 1e-6 and panel["num_data"] == 30
    assert len(panel["kl_per_dimension"]) == panel["latent_dim"] == 2 == len(panel["active"])
    assert (run_dir / "collapse.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--beta", "1,1"], "repeated"),
        (["--beta", "-1,2"], "beta"),
        (["--beta", "1,x"], "comma-separated numbers"),
        (["--beta", "1,2", "--free-bits", "-0.5"], "free bits"),
        (["--beta", "1,2", "--track-every", "0"], "track-every"),
    ],
)
def test_sweep_user_errors_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "sweep"
    assert main(["sweep", "--out", str(out), *args, *TINY]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_sweep_refuses_a_non_empty_directory(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["sweep", "--beta", "1,2", "--out", str(out), *TINY]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_sweep_takes_the_train_options_and_defaults():
    parser = build_parser()
    args = parser.parse_args(["sweep", "--beta", "0.1,4", "--latent-dim", "3", "--free-bits", "0.2"])
    assert args.betas == (0.1, 4.0)
    config = train_config(args)
    assert config.latent_dim == 3 and config.free_bits == 0.2
    assert train_config(parser.parse_args(["train"])) == TrainConfig()
    assert EvaluateConfig().surgery_particles == 10


def test_sweep_help_imports_nothing_heavy():
    script = (
        "import contextlib, io, sys\nfrom pyro_vae.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n    main(['sweep', '--help'])\n"
        "assert 'usage: pyro-vae sweep' in out.getvalue()\n"
        "print(','.join(m for m in ('torch', 'pyro', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
