"""``pyro-vae evaluate --ais STEPS``: the AIS row in the printed table, evaluation.json,
bounds.csv and the bounds_vs_k figure."""

import csv
import json

import pytest

from pyro_vae.cli import build_parser, evaluate_config, main
from pyro_vae.commands.configs import EvaluateConfig
from pyro_vae.errors import InputError

TINY = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet", "--eval-particles", "2"]


def test_ais_options_parse_into_the_config():
    config = evaluate_config(
        build_parser().parse_args(["evaluate", "run", "--ais", "300", "--ais-chains", "4"])
    )
    assert (config.ais_steps, config.ais_chains) == (300, 4)
    assert evaluate_config(build_parser().parse_args(["evaluate", "run"])).ais_steps == 0


def test_bad_ais_settings_are_refused():
    for bad in ({"ais_steps": -1}, {"ais_chains": 0}):
        with pytest.raises(InputError, match="AIS"):
            EvaluateConfig(**bad).validate()


@pytest.mark.slow
def test_evaluate_with_ais_adds_its_row_everywhere(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    args = ["evaluate", str(out), "--ks", "1,10", "--num-points", "12", "--gap-points", "0"]
    args += ["--elbo-particles", "5", "--ais", "20", "--ais-chains", "4", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "AIS (20 steps x 4)" in printed
    results = json.loads((out / "evaluation.json").read_text())
    a = results["ais"]
    assert (a["steps"], a["chains"]) == (20, 4) and 0 < a["acceptance_rate"] <= 1
    assert a["bound"] > results["elbo"]  # AIS from the guide improves on the ELBO
    rows = list(csv.DictReader((out / "bounds.csv").read_text().splitlines()))
    assert rows[-1]["K"] == "AIS" and float(rows[-1]["bound"]) == pytest.approx(a["bound"])
    assert (out / "bounds_vs_k.png").is_file()
