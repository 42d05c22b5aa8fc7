"""Progress a user can see during a profile.

On a terminal: a tqdm bar with the step, elapsed time, ETA and the last step's time,
loss and memory. Elsewhere (CI logs, pipes, files): a plain line every ``every_steps``
steps and at least every ``every_s`` seconds, with the ETA. ``say`` prints a line
above the bar, for the "before / after" lines of long pauses.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def step_fields(row: Mapping[str, Any]) -> str:
    """'wall 153.2 ms loss 0.1234 rss 900 MiB allocated 12.3 MiB' from a steps.csv row."""
    text = f"wall {row['wall_ms']:.1f} ms"
    loss = row.get("loss")
    if isinstance(loss, (int, float)):  # a user's loop may log anything under "loss"
        text += f" loss {float(loss):.5g}"
    if row.get("rss_bytes"):
        text += f" rss {row['rss_bytes'] / 2**20:.0f} MiB"
    if row.get("allocated_bytes") is not None:
        text += f" allocated {row['allocated_bytes'] / 2**20:.1f} MiB"
    return text


class StepProgress:
    def __init__(self, total: int, stream: TextIO | None = None, every_steps: int = 10,
                 every_s: float = 30.0, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.every_steps = every_steps
        self.every_s = every_s
        self.clock = clock
        self._start = clock()
        self._last_line = self._start
        self._first = True
        if tty is None:
            try:
                tty = self.stream.isatty()
            except (AttributeError, ValueError, OSError):
                tty = False
        self.bar = None
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, file=self.stream, unit="step", desc="profile",
                            dynamic_ncols=True, mininterval=0.2, leave=True)

    def step(self, done: int, row: Mapping[str, Any]) -> None:
        """After step ``done`` (1-based) with its steps.csv row."""
        fields = step_fields(row)
        if self.bar is not None:
            self.bar.set_postfix_str(fields, refresh=False)
            self.bar.update(1)
            return
        now = self.clock()
        if self._first:  # the clock starts at the first step, not before the set-up
            self._first = False
            self._start = self._last_line = now - row["wall_ms"] / 1e3
        if done % self.every_steps and done != self.total and now - self._last_line < self.every_s:
            return
        elapsed = now - self._start
        if not self.total:  # a user's loop: the number of steps is not known
            self._print(f"step {done} {fields} elapsed {duration(elapsed)}")
        else:
            eta = elapsed / done * (self.total - done)
            self._print(f"step {done}/{self.total} {fields} "
                        f"elapsed {duration(elapsed)} ETA {duration(eta)}")
        self._last_line = now

    def say(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            self._print(message)

    def _print(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
