"""``--device`` and the rule that dtype and device follow the input: the CPU checks of the GPU
path (a clear error without a GPU; the core tools in float64, where a hard-coded float32 or
CPU tensor would show), and the GPU tests themselves, skipped where PyTorch sees no GPU."""

from __future__ import annotations

import json

import pytest
import torch

from pyro_vae.bounds import amortization_gap, elbo, iwae, log_marginal
from pyro_vae.cli import main
from pyro_vae.commands.configs import TrainConfig, check_device
from pyro_vae.diagnostics import active_units, importance_diagnostics, kl_per_dimension
from pyro_vae.errors import InputError
from pyro_vae.likelihoods import Gaussian
from pyro_vae.models import VAE, LinearGaussian
from pyro_vae.train import fit, rate_distortion


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_device_names(no_gpu):
    assert check_device("cpu") == "cpu"
    assert check_device("auto") == "cpu"
    with pytest.raises(InputError, match="--device cuda, but PyTorch sees no GPU.*--device cpu"):
        check_device("cuda")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        check_device("tpu")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "1"],
        ["evaluate", "RUN"],
        ["compare", "--epochs", "1"],
    ],
)
def test_cuda_without_gpu_is_one_line_and_writes_nothing(argv, tmp_path, capsys, no_gpu, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "evaluate":
        (tmp_path / "RUN").mkdir()
        (tmp_path / "RUN" / "config.json").write_text(json.dumps(TrainConfig().to_json()))
        argv = ["evaluate", str(tmp_path / "RUN")]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = [] if argv[0] == "evaluate" else ["--out", str(tmp_path / "out")]
    assert main([*argv, *out, "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda, but PyTorch sees no GPU" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_the_core_tools_compute_in_the_input_dtype():
    """A float64 VAE on float64 data: trained parameters, every bound, the diagnostics and the
    metrics stay float64 (a hard-coded float32 tensor anywhere would promote or fail)."""
    torch.manual_seed(0)
    vae = VAE(Gaussian(4), latent_dim=2, hidden=(8,)).double()
    x = torch.randn(30, 4, dtype=torch.float64)
    result = fit(vae.model, vae.guide, x, validation=x[:10], epochs=2, batch_size=10, progress=False)
    assert all(p.dtype == torch.float64 for p in vae.parameters())
    assert isinstance(result.last("val_elbo"), float)
    for value in (
        elbo(vae.model, vae.guide, x, num_particles=3),
        iwae(vae.model, vae.guide, x, num_particles=5),
        iwae(vae.model, vae.guide, x, num_particles=5, return_error=True).standard_error,
        rate_distortion(vae.model, vae.guide, (x,)).rate,
        importance_diagnostics(vae.model, vae.guide, x, num_particles=50).k_hat,
        kl_per_dimension(vae.model, vae.guide, x),
        active_units(vae.guide, x).variance,
    ):
        assert value.dtype == torch.float64
    gap = amortization_gap(vae.model, vae.guide, x[:3], steps=3, num_particles=5, progress=False)
    for estimate in (gap.log_marginal, gap.optimal, gap.amortized, gap.amortization_gap):
        assert estimate.value.dtype == torch.float64


def test_float64_log_marginal_matches_the_exact_one():
    """In float64 the IWAE estimate of log p(x) of the linear-Gaussian model at the exact
    posterior is within 4 standard errors of the closed form."""
    torch.manual_seed(1)
    m = LinearGaussian(5, 2).double()
    m.set_guide_to_posterior()
    x = torch.randn(8, 5, dtype=torch.float64)
    est = log_marginal(m.model, m.guide, x, num_particles=200)
    exact = m.log_marginal(x)
    assert est.value.dtype == torch.float64
    assert ((est.value - exact).abs() <= 4 * est.standard_error + 1e-9).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_and_bounds_on_the_gpu_follow_the_data():
    torch.manual_seed(0)
    vae = VAE(Gaussian(4), latent_dim=2, hidden=(8,)).cuda()
    x = torch.randn(40, 4, device="cuda")
    fit(vae.model, vae.guide, x, validation=x[:10], epochs=2, batch_size=10, progress=False)
    assert all(p.is_cuda for p in vae.parameters())
    value = iwae(vae.model, vae.guide, x, num_particles=5)
    assert value.is_cuda and value.dtype == torch.float32
    cpu = vae.cpu()
    torch.testing.assert_close(
        elbo(cpu.model, cpu.guide, x.cpu(), num_particles=2000).mean(),
        elbo(vae.cuda().model, vae.guide, x, num_particles=2000).mean().cpu(),
        atol=0.2,
        rtol=0,
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_and_evaluate_commands_on_the_gpu(tmp_path):
    out = tmp_path / "run"
    argv = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--eval-particles", "1", "--quiet"]
    assert main(["train", *argv, "--out", str(out), "--device", "cuda"]) == 0
    assert (
        main(
            [
                "evaluate",
                str(out),
                "--ks",
                "1,5",
                "--num-points",
                "20",
                "--gap-points",
                "2",
                "--gap-steps",
                "5",
                "--quiet",
                "--device",
                "cuda",
            ]
        )
        == 0
    )
    assert (out / "evaluation.json").is_file()
