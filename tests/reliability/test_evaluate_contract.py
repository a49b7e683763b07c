"""evaluate writes its results only after computing all of them: a failure leaves the earlier
results as they were."""

import pytest

from pyro_vae.cli import main
from pyro_vae.errors import InputError

TINY = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet", "--eval-particles", "2"]
EVAL = ["--ks", "1,5", "--num-points", "20", "--gap-points", "0", "--quiet"]


@pytest.mark.slow
def test_a_failed_evaluation_leaves_the_earlier_results_intact(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    assert main(["evaluate", str(out), *EVAL]) == 0
    results = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".json", ".csv", ".png")}
    assert {"evaluation.json", "bounds.csv", "bounds_vs_k.png"} <= set(results)

    import pyro_vae.commands.evaluate as evaluate

    def broken(*args, **kwargs):
        raise InputError("the diagnostics failed on purpose")

    monkeypatch.setattr(evaluate, "importance_diagnostics", broken)
    assert (
        main(["evaluate", str(out), "--ks", "1,50", "--num-points", "20", "--gap-points", "0", "--quiet"])
        == 2
    )
    assert "failed on purpose" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in results} == results
    assert not list(out.glob(".*"))  # no temporary file, no lock left behind
