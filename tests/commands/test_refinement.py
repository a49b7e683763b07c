"""pyro-vae train --refine-steps / --refine-lr and the refined bounds of evaluate."""

import json

from pyro_vae.cli import main
from pyro_vae.commands.configs import TrainConfig

TINY = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet", "--eval-particles", "2"]


def test_an_old_config_without_the_refinement_fields_still_loads():
    old = TrainConfig().to_json()
    del old["refine_steps"], old["refine_lr"]
    config = TrainConfig.from_json(old)
    assert (config.refine_steps, config.refine_lr) == (0, 0.01)


def test_a_semi_amortized_run_records_its_steps_and_evaluate_reports_the_refined_bounds(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--refine-steps", "2", "--refine-lr", "0.05", *TINY]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["refine_steps"], config["refine_lr"]) == (2, 0.05)
    capsys.readouterr()
    args = ["evaluate", str(out), "--ks", "1,10", "--num-points", "20", "--gap-points", "0"]
    assert main([*args, "--elbo-particles", "10", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "ELBO refined (S=2)" in printed and "L_10 refined (S=2)" in printed
    results = json.loads((out / "evaluation.json").read_text())
    refined = results["refined"]
    assert refined["steps"] == 2 and refined["K"] == 10
    assert refined["elbo"] <= refined["log_marginal"] + 4 * (refined["elbo_se"] + refined["log_marginal_se"])


def test_a_negative_number_of_refinement_steps_is_a_user_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--refine-steps", "-1", *TINY]) == 2
    assert "refine steps" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
