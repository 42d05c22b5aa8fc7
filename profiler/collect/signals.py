"""SIGINT / SIGTERM during a profile: stop at the next safe point, flush, mark ``interrupted``.

The handlers cover the whole run, post-processing included. A handler only sets a
flag: nothing is ever cut mid-write. While the run is being finished (``finishing``),
a signal skips the remaining post-processing but lets run.json and the files already
complete be written; a second signal during the steps raises ``KeyboardInterrupt``
at once (the finish still runs).
"""

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
        self.finishing = False
        self.count = 0  # signals received so far
        self._old: dict[int, Any] = {}
        self._depth = 0  # nested ``with``: the handlers are installed once, by the outermost

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.signame is not None and not self.finishing:
            raise KeyboardInterrupt
        self.signame = self.signame or signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signame is not None

    def __enter__(self) -> StopSignals:
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def check(self) -> None:
        if self.signame is not None:
            raise StopRequested(self.signame)
