"""SIGINT / SIGTERM during a profile: stop at the next safe point, flush, mark ``interrupted``."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StopRequested(Exception):
    """Raised at a safe point (phase or step end) after SIGINT / SIGTERM."""

    def __init__(self, signame: str) -> None:
        super().__init__(f"stopped by {signame}")
        self.signame = signame


class StopSignals:
    """Context manager: the first signal sets a flag checked by ``check()``; a second one
    raises ``KeyboardInterrupt`` at once. Handlers are restored on exit; outside the
    main thread it does nothing."""

    def __init__(self) -> None:
        self.signame: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signame is not None:
            raise KeyboardInterrupt
        self.signame = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def check(self) -> None:
        if self.signame is not None:
            raise StopRequested(self.signame)
