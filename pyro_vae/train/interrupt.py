"""Stopping a training run cleanly on SIGINT or SIGTERM: at the end of the current step."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class GracefulStop:
    """While active, the first SIGINT (Ctrl-C) or SIGTERM only sets :attr:`requested`; the
    training loop finishes its current step, writes a checkpoint and stops. A second SIGINT
    interrupts at once (``KeyboardInterrupt``), for a run that must die now. Outside the main
    thread (where Python cannot install handlers) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.requested).name if self.requested is not None else ""
