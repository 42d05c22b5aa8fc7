"""``MemoryProfiler``: memory and time of named code blocks.

    mp = MemoryProfiler(device)
    with mp.profile("carrier"):
        ...
    mp.get_top_memory_users(5)

Memory is the device's allocated bytes on CUDA (``torch.cuda.memory_allocated``;
the block's peak comes from ``max_memory_allocated`` only when
``reset_peak=True``, because resetting the peak disturbs anyone else reading
it) and the process's resident set size on CPU (the CPU allocator keeps no
statistics; RSS also moves for reasons outside the block, so small deltas are noise).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import psutil
import torch


@dataclass(frozen=True)
class ProfileRecord:
    name: str
    duration_ms: float
    start_bytes: int
    end_bytes: int
    delta_bytes: int
    peak_bytes: int | None  # CUDA with reset_peak only
    source: str             # cuda-allocated | process-rss


class MemoryProfiler:
    def __init__(self, device: torch.device | str | None = None, reset_peak: bool = False):
        self.device = torch.device(device if device is not None else "cpu")
        self.reset_peak = reset_peak and self.device.type == "cuda"
        self.records: list[ProfileRecord] = []
        self._process = psutil.Process()

    def _current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return self._process.memory_info().rss

    @contextmanager
    def profile(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            if self.reset_peak:
                torch.cuda.reset_peak_memory_stats(self.device)
        start = self._current()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
            duration = (time.perf_counter() - t0) * 1e3
            end = self._current()
            peak = torch.cuda.max_memory_allocated(self.device) if self.reset_peak else None
            self.records.append(ProfileRecord(
                name, duration, start, end, end - start, peak,
                "cuda-allocated" if cuda else "process-rss"))

    def get_top_memory_users(self, n: int = 10) -> list[dict[str, Any]]:
        """The ``n`` blocks with the largest memory growth (peak growth when recorded)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")

        def growth(r: ProfileRecord) -> int:
            return r.peak_bytes - r.start_bytes if r.peak_bytes is not None else r.delta_bytes

        ranked = sorted(self.records, key=growth, reverse=True)
        return [asdict(r) for r in ranked[:n]]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per name: calls, total and max duration (ms), total and max delta (bytes)."""
        out: dict[str, dict[str, float]] = {}
        for r in self.records:
            s = out.setdefault(r.name, {"calls": 0, "total_ms": 0.0, "max_ms": 0.0,
                                        "total_delta_bytes": 0, "max_delta_bytes": r.delta_bytes})
            s["calls"] += 1
            s["total_ms"] += r.duration_ms
            s["max_ms"] = max(s["max_ms"], r.duration_ms)
            s["total_delta_bytes"] += r.delta_bytes
            s["max_delta_bytes"] = max(s["max_delta_bytes"], r.delta_bytes)
        return out
