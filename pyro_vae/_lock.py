"""One process at a time per run directory: a lock file that names its owner."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pyro_vae.errors import InputError

LOCK = ".pyro-vae.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class RunLock:
    """Hold ``directory/.pyro-vae.lock`` (created with ``O_EXCL``, holding the owner's host
    and PID) while a command writes into ``directory``. A second process is refused, naming
    the owner; a lock whose owner on this host has died is stale and taken over. The lock
    file is removed on exit, even on error."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LOCK
        self.held = False

    def _owner(self) -> tuple[str, int] | None:
        try:
            host, pid = self.path.read_text().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def __enter__(self) -> RunLock:
        me = f"{socket.gethostname()} {os.getpid()}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and (owner[0] != socket.gethostname() or _alive(owner[1])):
                    raise InputError(
                        f"run directory {self.path.parent} is in use by process {owner[1]} on {owner[0]} "
                        f"(lock file {self.path}); wait for it to finish or stop it"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner died without cleaning up
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise InputError(f"could not take the lock {self.path}: another process keeps creating it")

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
