"""Per-step allocator statistics and process memory, read at measurement points only."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

import psutil
import torch


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo2():
    """glibc's ``mallinfo2`` (all arenas, about a microsecond), or None elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


class StepMemory:
    """Allocator allocated / reserved / peak bytes and process RSS for one device.

    CUDA: ``torch.cuda`` allocator counters; the peak is reset after each read so
    that ``peak_bytes`` is the peak within the step. CPU: PyTorch's CPU allocator
    is the C library's malloc and keeps no counters outside a profiler, so
    ``allocated_bytes`` is glibc's ``mallinfo2`` bytes in use (uordblks + mmapped
    hblkhd: tensors and every other C allocation of the process),
    ``reserved_bytes`` equals it (as the run-directory contract says for CPU),
    ``peak_bytes`` stays empty; without glibc all three stay empty. ``source``
    names where the numbers come from.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._process = psutil.Process()
        self._cuda = device.type == "cuda"
        self._mallinfo = None if self._cuda else _mallinfo2()
        if self._cuda:
            self.source = "torch.cuda caching allocator"
        else:
            self.source = "glibc mallinfo2 (uordblks + hblkhd)" if self._mallinfo else None

    def begin_step(self) -> None:
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, Any]:
        out: dict[str, Any] = {"allocated_bytes": None, "reserved_bytes": None,
                               "peak_bytes": None}
        if self._cuda:
            out["allocated_bytes"] = torch.cuda.memory_allocated(self.device)
            out["reserved_bytes"] = torch.cuda.memory_reserved(self.device)
            out["peak_bytes"] = torch.cuda.max_memory_allocated(self.device)
        elif self._mallinfo is not None:
            info = self._mallinfo()
            out["allocated_bytes"] = out["reserved_bytes"] = info.uordblks + info.hblkhd
        out["rss_bytes"] = self._process.memory_info().rss
        return out

    def at_failure(self) -> dict[str, Any]:
        """The memory state to record in run.json when a step fails (OOM included)."""
        state = self.read()
        if self._cuda:
            stats = torch.cuda.memory_stats(self.device)
            keep = ("allocated_bytes.all.current", "allocated_bytes.all.peak",
                    "reserved_bytes.all.current", "reserved_bytes.all.peak",
                    "num_alloc_retries", "num_ooms", "inactive_split_bytes.all.current")
            state["allocator"] = {k: stats.get(k) for k in keep}
            free, total = torch.cuda.mem_get_info(self.device)
            state["device_free_bytes"], state["device_total_bytes"] = free, total
        return state


def sync(device: torch.device) -> None:
    """Wait for the device (a measurement point); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CudaSnapshot:
    """Bounded CUDA allocation history with Python stacks (no-op on CPU builds / devices)."""

    def __init__(self, device: torch.device, max_entries: int = 100_000) -> None:
        self.active = device.type == "cuda" and torch.cuda.is_available()
        self.max_entries = max_entries

    def start(self) -> None:
        if self.active:
            torch.cuda.memory._record_memory_history(stacks="python",
                                                     max_entries=self.max_entries)

    def dump(self, path: str) -> bool:
        if not self.active:
            return False
        torch.cuda.memory._dump_snapshot(path)
        return True

    def stop(self) -> None:
        if self.active:
            torch.cuda.memory._record_memory_history(enabled=None)
