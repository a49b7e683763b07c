"""Faults while writing: a full disk, and kill -9 between the temporary file and the rename."""

import errno
import subprocess
import sys

import pytest
import torch

from pyro_vae import _io
from pyro_vae.cli import main
from pyro_vae.errors import OutputError
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit, load_checkpoint

TINY = ["--hidden", "8", "--latent-dim", "2", "--quiet", "--eval-particles", "2"]


def _vae(seed=0):
    torch.manual_seed(seed)
    return VAE(Bernoulli(6), latent_dim=2, hidden=(5,))


def _data():
    return (torch.rand(40, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    ckpt = tmp_path / "c.pt"
    vae = _vae()
    fit(vae.model, vae.guide, _data(), epochs=1, batch_size=8, checkpoint=ckpt, progress=False)
    before = ckpt.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", no_space)
    with pytest.raises(OutputError, match=r"No space left on device; the previous c.pt is unchanged"):
        fit(
            vae.model,
            vae.guide,
            _data(),
            epochs=2,
            batch_size=8,
            checkpoint=ckpt,
            resume=True,
            progress=False,
        )
    assert ckpt.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_cli_says_so_in_one_line_on_a_full_disk(tmp_path, monkeypatch, capsys):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", no_space)
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error: cannot write") and "No space left" in err and "\n" not in err


KILL_BEFORE_RENAME = """
import os, signal, sys
from pathlib import Path
import pyro_vae._io as io
renames = []
def kill(tmp, path):
    if path.name == "checkpoint.pt":
        renames.append(path)
        if len(renames) == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
io._before_rename = kill
from pyro_vae.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [2, 4])
def test_kill_9_between_the_write_and_the_rename_leaves_the_old_state_and_resume_is_exact(tmp_path, kill_at):
    """The process dies with the new checkpoint written to its temporary file but not renamed:
    the run directory holds the previous checkpoint, whole; the next run removes the stale
    temporary file, resumes, and ends with exactly the parameters of a run never killed."""
    args = ["train", "--epochs", "6", "--seed", "3", *TINY]
    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_BEFORE_RENAME, str(kill_at), *args, "--out", str(killed)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] == kill_at - 1  # the old state, whole
    assert len(list(killed.glob(".checkpoint.pt.*.tmp"))) == 1  # the new one, never renamed
    assert main([*args[:1], "--out", str(killed), "--resume", "--epochs", "6", "--quiet"]) == 0
    assert not list(killed.glob(".*.tmp"))
    whole = tmp_path / "whole"
    assert main([*args, "--out", str(whole)]) == 0
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    for k, v in b["params"].items():
        assert torch.equal(a["params"][k], v), k


@pytest.mark.slow
def test_kill_9_at_random_moments_never_breaks_the_run(tmp_path):
    """Three training processes into one run directory, each killed with SIGKILL at a seeded
    random moment (whatever it was doing: a step, the metrics, a checkpoint write), each
    resuming the last: after every kill the checkpoint loads (the old state or the new, whole),
    and the final resume ends with exactly the parameters of a run never killed."""
    import random
    import signal
    import time

    rng = random.Random(7)
    out = tmp_path / "run"
    base = [sys.executable, "-m", "pyro_vae", "train", "--out", str(out), "--seed", "4", *TINY]
    epochs = ["--epochs", "40"]
    for attempt in range(3):
        resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
        proc = subprocess.Popen([*base, *epochs, *resume], stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (out / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        state = load_checkpoint(out / "checkpoint.pt")  # never half-written
        assert 1 <= state["epoch"] <= 40, attempt
    assert main(["train", "--out", str(out), "--resume", *epochs, "--quiet"]) == 0
    whole = tmp_path / "whole"
    assert main(["train", "--out", str(whole), "--seed", "4", *TINY, *epochs]) == 0
    a, b = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 40
    for k, v in b["params"].items():
        assert torch.equal(a["params"][k], v), k
