"""SIGINT and SIGTERM during training: stop at the end of the step, checkpoint, resume exactly."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyro_vae.errors import TrainingInterrupted
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit


def _data():
    return (torch.rand(40, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()


def _vae(seed=0):
    torch.manual_seed(seed)
    return VAE(Bernoulli(6), latent_dim=2, hidden=(5,))


def _signal_at(step, signum):
    calls = []

    def transform(batch):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return batch

    return transform


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("at_step", [3, 7])
def test_a_signal_stops_after_the_step_and_resuming_is_bitwise_exact(tmp_path, signum, at_step):
    """Epochs of 5 steps; the signal arrives in the middle of epoch 1 (step 3) or epoch 2
    (step 7): the checkpoint holds the position within the epoch, and the resumed run ends
    with the same parameters and history as a run never stopped."""
    x = _data()
    full = _vae()
    reference = fit(full.model, full.guide, x, epochs=3, batch_size=8, seed=5, progress=False)
    ckpt = tmp_path / "c.pt"
    stopped = _vae()
    with pytest.raises(
        TrainingInterrupted, match=f"stopped on {signal.Signals(signum).name}.*resume"
    ) as info:
        fit(
            stopped.model,
            stopped.guide,
            x,
            epochs=3,
            batch_size=8,
            seed=5,
            checkpoint=ckpt,
            transform=_signal_at(at_step, signum),
            progress=False,
        )
    assert info.value.step == at_step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    resumed = _vae(99)
    res = fit(
        resumed.model,
        resumed.guide,
        x,
        epochs=3,
        batch_size=8,
        seed=5,
        checkpoint=ckpt,
        resume=True,
        progress=False,
    )
    for (k, v), w in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(v, w), k

    def comparable(history):  # NaN (no validation data) is not equal to itself
        return [{k: None if v != v else v for k, v in h.items() if k != "seconds"} for h in history]

    assert comparable(res.history) == comparable(reference.history)


def test_without_a_checkpoint_path_the_message_says_nothing_was_written():
    vae = _vae()
    with pytest.raises(TrainingInterrupted, match="no checkpoint was written"):
        fit(
            vae.model,
            vae.guide,
            _data(),
            epochs=2,
            batch_size=8,
            transform=_signal_at(2, signal.SIGINT),
            progress=False,
        )


@pytest.mark.slow
def test_the_cli_stops_on_sigterm_with_one_line_and_resumes(tmp_path):
    """A real process: SIGTERM while `pyro-vae train` runs; it exits 130 with one line naming
    the checkpoint, the run directory holds a loadable checkpoint, and --resume finishes."""
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "pyro_vae",
        "train",
        "--out",
        str(out),
        "--epochs",
        "400",
        "--hidden",
        "8",
        "--latent-dim",
        "2",
        "--quiet",
        "--eval-particles",
        "2",
    ]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "stopped on SIGTERM" in lines[0] and "--resume" in lines[0], err
    from pyro_vae.train import load_checkpoint

    state = load_checkpoint(out / "checkpoint.pt")
    assert 0 < state["step"]
    resume = [sys.executable, "-m", "pyro_vae", "train", "--out", str(out), "--resume", "--quiet"]
    done = subprocess.run(
        [*resume, "--epochs", str(state["epoch"] + 1)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
