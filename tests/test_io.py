"""Atomic writes keep the old file when writing fails."""

import pytest

from pyro_vae._io import atomic_write, atomic_write_text


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
