"""One process at a time per run directory; a lock left by a dead process is taken over."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pyro_vae._lock import LOCK, RunLock
from pyro_vae.cli import main
from pyro_vae.errors import InputError

TINY = ["--hidden", "8", "--latent-dim", "2", "--quiet", "--eval-particles", "2"]


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_owner_is_named_and_a_dead_ones_lock_is_taken_over(tmp_path):
    (tmp_path / LOCK).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    with pytest.raises(InputError, match=f"in use by process {os.getpid()}"):
        with RunLock(tmp_path):
            pass
    (tmp_path / LOCK).write_text(f"{socket.gethostname()} {_dead_pid()}\n")
    with RunLock(tmp_path):
        assert (tmp_path / LOCK).read_text().split()[1] == str(os.getpid())
    assert not (tmp_path / LOCK).exists()


@pytest.mark.slow
def test_a_second_training_into_the_same_run_is_refused_until_the_first_dies(tmp_path, capsys):
    """A real training process holds the run; a second `--resume` is refused with the owner's
    PID and changes nothing; after `kill -9` of the first, its stale lock is taken over and
    the resume finishes."""
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", "train", "--out", str(out), "--epochs", "2000", *TINY]
    )
    deadline = time.time() + 60
    while not ((out / "checkpoint.pt").exists() and (out / LOCK).exists()) and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert main(["train", "--out", str(out), "--resume", "--epochs", "1", *TINY]) == 2
        err = capsys.readouterr().err
        assert f"in use by process {first.pid}" in err and err.count("\n") == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert (out / LOCK).exists()  # kill -9 leaves it behind; it is stale now
    from pyro_vae.train import load_checkpoint

    epoch = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert main(["train", "--out", str(out), "--resume", "--epochs", str(epoch + 1), *TINY]) == 0
    assert not (out / LOCK).exists()
