"""Atomic writes keep the old file when writing fails, in this thread or in the background."""

import errno

import pytest

from pyro_vae import _io
from pyro_vae._io import BackgroundWrites, atomic_write, atomic_write_text
from pyro_vae.errors import OutputError


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def fail(f):
        f.write(b"half of the new conte")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_background_writes_snapshot_the_state_and_land_in_order(tmp_path):
    import torch

    from pyro_vae.train.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "c.pt"
    w = torch.zeros(3)
    with BackgroundWrites() as writes:
        save_checkpoint(path, {"params": {"w": w}, "epoch": 1}, writes=writes)
        w += 1  # after the call: the checkpoint holds the values it was given
        save_checkpoint(path, {"params": {"w": w}, "epoch": 2}, writes=writes)
        w += 1
    state = load_checkpoint(path)  # on disk when the block ends: the second, whole
    assert state["epoch"] == 2 and torch.equal(state["params"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_a_failed_background_write_raises_at_the_next_wait_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", no_space)
    writes = BackgroundWrites()
    writes.submit(path, b"new")
    with pytest.raises(OutputError, match="No space left on device; the previous f.bin is unchanged"):
        writes.wait()
    writes.wait()  # reported once
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    writes.submit(path, b"new")
    with pytest.raises(OutputError):  # at the next submit, before anything else is written
        writes.submit(path, b"newer")
    # leaving the block with an error of the caller's own: that error, not the write's
    with pytest.raises(KeyError), BackgroundWrites() as pending:
        pending.submit(path, b"new")
        raise KeyError("the caller's")
    assert path.read_bytes() == b"old"
