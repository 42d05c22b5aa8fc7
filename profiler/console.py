"""Console output that is never the run: a closed stdout / stderr is noted and ignored.

``quiet_on_broken_pipe()`` wraps ``sys.stdout`` and ``sys.stderr`` for the duration of a
command. A write that fails (the reader of ``| head`` exited, a closed terminal) points
that stream's file descriptor at /dev/null and drops the text: the run goes on and
finishes its record, and the interpreter does not die at exit flushing a dead pipe.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO


class SafeStream:
    """A text stream whose writes never raise ``OSError`` (``BrokenPipeError`` included)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._silence()

    def _silence(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # the buffered rest drains into /dev/null
            os.close(devnull)

    def isatty(self) -> bool:
        try:
            return not self.broken and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def quiet_on_broken_pipe() -> Iterator[None]:
    old = sys.stdout, sys.stderr
    if sys.stdout is not None:
        sys.stdout = SafeStream(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = SafeStream(sys.stderr)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, SafeStream):
                stream.flush()
        sys.stdout, sys.stderr = old
