"""Per-step allocator statistics and process memory, read at measurement points only."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
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


class _Rss:
    """Current resident set size: ``/proc/self/statm`` read through a descriptor kept open
    (a few microseconds), else psutil (tens of microseconds: it parses more of /proc)."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = None
            self._process = psutil.Process()

    def __call__(self) -> int:
        if self._fd is not None:
            return int(os.pread(self._fd, 128, 0).split()[1]) * self._page
        return self._process.memory_info().rss

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]


class StepMemory:
    """Per-step tensor memory of one device, plus process memory under honest names.

    Columns of ``read()`` (bytes, counts per step):
    - ``allocated_bytes``: tensor bytes live at the end of the step. CUDA: the caching
      allocator's ``memory_allocated``. CPU: the tensor counter
      (``profiler.collect.tensor_counter``) minus its value when the session began, so
      it counts the workload's tensors only (never the heap).
    - ``peak_bytes``: the highest such value within the step (peak reset each step).
    - ``reserved_bytes``: CUDA caching allocator reserve; empty on CPU (no such thing).
    - ``alloc_count`` / ``alloc_bytes``: tensor allocations made during the step and
      their bytes (deterministic for a fixed seed and config).
    - ``heap_bytes``: glibc ``mallinfo2`` bytes in use (uordblks + hblkhd): every C
      allocation of the process, profiler buffers included. Context only, never
      compared as model memory.
    - ``rss_bytes``: process resident set size.
    The two process figures are sampled on the first read and then every ``process_every``
    reads (empty in between): right after a training step mallinfo2 walks a heap full
    of freed chunks (about 0.2 ms) and the RSS read about 30 us, more than all the
    tensor figures together; they are context, and a trend every few steps serves.
    ``source`` names where allocated / peak come from (None when unavailable).
    """

    def __init__(self, device: torch.device, count_tensors: bool = True,
                 process_every: int = 1) -> None:
        if process_every < 1:
            raise ValueError(f"process_every must be >= 1, got {process_every}")
        self.device = device
        self.process_every = process_every
        self._reads = 0
        self._rss = _Rss()
        self._cuda = device.type == "cuda"
        self._mallinfo = _mallinfo2()
        self.source: str | None
        self._counter: Any = None
        self._base = 0
        self._last_count = self._last_bytes = 0
        self.unavailable_reason: str | None = None
        if self._cuda:
            self.source = "torch.cuda caching allocator"
        elif count_tensors:
            from profiler.collect import tensor_counter

            try:
                tensor_counter.install()
                self._counter = tensor_counter
                self._view = tensor_counter.view()
                counts = tensor_counter.read()
                self._base = counts.live_bytes
                self._last_count, self._last_bytes = counts.alloc_count, counts.alloc_bytes
                self.source = "tensor counter (counting CPU allocator)"
            except tensor_counter.CounterUnavailable as exc:
                self.source = None
                self.unavailable_reason = str(exc)
        else:
            self.source = None
        if self._cuda:
            stats = torch.cuda.memory_stats(device)
            self._last_count = stats.get("allocation.all.allocated", 0)
            self._last_bytes = stats.get("allocated_bytes.all.allocated", 0)

    def begin_step(self) -> None:
        """Start a measured step: peak reset, allocation counts from here."""
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            stats = torch.cuda.memory_stats(self.device)
            self._last_count = stats.get("allocation.all.allocated", 0)
            self._last_bytes = stats.get("allocated_bytes.all.allocated", 0)
        elif self._counter is not None:
            self._counter.reset_peak()
            c = self._counter.read()
            self._last_count, self._last_bytes = c.alloc_count, c.alloc_bytes

    def capture(self) -> tuple[int, int, int, int] | None:
        """``read(begin_next=True)``'s tensor figures as a tuple (allocated, peak,
        allocations, allocated bytes), no process figures; None without the CPU counter
        (then call ``read``). For a loop that records its rows later (``figures``): a few
        loads and stores, where ``read`` builds its dict right after the step."""
        if self._counter is None:
            return None
        self._reads += 1
        return self._take(begin_next=True)

    def _take(self, begin_next: bool) -> tuple[int, int, int, int]:
        """The CPU counters since the last take (the peak reset for the next step when
        ``begin_next``), read in place (``tensor_counter.view``)."""
        view = self._view
        live, peak, count, nbytes = view[0], view[1], view[2], view[3]
        if begin_next:
            view[1] = live
        taken = (live - self._base, peak - self._base, count - self._last_count,
                 nbytes - self._last_bytes)
        self._last_count, self._last_bytes = count, nbytes
        return taken

    @staticmethod
    def figures(taken: tuple[int, int, int, int]) -> dict[str, Any]:
        """The columns of ``read`` for a ``capture`` (process figures empty)."""
        return {"allocated_bytes": taken[0], "reserved_bytes": None, "peak_bytes": taken[1],
                "alloc_count": taken[2], "alloc_bytes": taken[3], "heap_bytes": None,
                "rss_bytes": None}

    def read(self, begin_next: bool = False, process: bool | None = None) -> dict[str, Any]:
        """This step's figures (class docstring); ``begin_next``: also ``begin_step`` for
        the next step, in the same call to the counter (what follows counts to it).
        ``process``: sample the process figures now (None: on the first read and every
        ``process_every`` reads)."""
        out: dict[str, Any]
        if self._counter is not None:  # CPU: the tensor counter
            out = self.figures(self._take(begin_next))
        else:
            out = {"allocated_bytes": None, "reserved_bytes": None, "peak_bytes": None,
                   "alloc_count": None, "alloc_bytes": None, "heap_bytes": None}
        if self._cuda:
            stats = torch.cuda.memory_stats(self.device)
            out["allocated_bytes"] = stats.get("allocated_bytes.all.current", 0)
            out["reserved_bytes"] = stats.get("reserved_bytes.all.current", 0)
            out["peak_bytes"] = stats.get("allocated_bytes.all.peak", 0)
            count = stats.get("allocation.all.allocated", 0)
            total = stats.get("allocated_bytes.all.allocated", 0)
            out["alloc_count"], out["alloc_bytes"] = (count - self._last_count,
                                                      total - self._last_bytes)
            self._last_count, self._last_bytes = count, total
            if begin_next:
                torch.cuda.reset_peak_memory_stats(self.device)
        if process is None:
            process = self._reads == 0 or (self._reads + 1) % self.process_every == 0
        if process:
            if self._mallinfo is not None:
                info = self._mallinfo()
                out["heap_bytes"] = info.uordblks + info.hblkhd
            out["rss_bytes"] = self._rss()
        else:
            out["rss_bytes"] = None
        self._reads += 1
        return out

    def at_failure(self) -> dict[str, Any]:
        """The memory state to record in run.json when a step fails (OOM included)."""
        state = self.read()
        state["rss_bytes"] = self._rss()  # whether or not this read sampled it
        if self._cuda:
            stats = torch.cuda.memory_stats(self.device)
            keep = ("allocated_bytes.all.current", "allocated_bytes.all.peak",
                    "reserved_bytes.all.current", "reserved_bytes.all.peak",
                    "num_alloc_retries", "num_ooms", "inactive_split_bytes.all.current")
            state["allocator"] = {k: stats.get(k) for k in keep}
            free, total = torch.cuda.mem_get_info(self.device)
            state["device_free_bytes"], state["device_total_bytes"] = free, total
        return state


def trim_heap() -> bool:
    """Give free heap memory back to the system (glibc ``malloc_trim(0)``); False elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def sync(device: torch.device) -> None:
    """Wait for the device (a measurement point); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The OOM guard turns the allocation history on once a step's peak leaves less than this
# fraction of the device free (peak allocated + memory that is not PyTorch's, over total).
OOM_GUARD_HEADROOM = 0.10


def history_unsupported(backend: str) -> str | None:
    """Why the allocator ``backend`` (``torch.cuda.get_allocator_backend()``) cannot record
    a memory history with stacks, or None when it can."""
    if backend == "cudaMallocAsync":
        return ("memory history unavailable: the cudaMallocAsync allocator backend "
                "(PYTORCH_CUDA_ALLOC_CONF) records neither history nor snapshots")
    return None


def guard_should_arm(total: int, free: int, reserved: int, peak_allocated: int,
                     headroom: float = OOM_GUARD_HEADROOM) -> bool:
    """True when a step's peak came within ``headroom`` of the device's capacity: bytes not
    PyTorch's (``total - free - reserved``: context, libraries, other processes) plus the
    step's peak allocated bytes leave less than ``headroom * total`` free."""
    not_torch = max(0, total - free - reserved)
    return total - (not_torch + peak_allocated) < headroom * total


class CudaSnapshot:
    """CUDA allocation history with Python stacks, recorded only while it is asked for
    (no-op on CPU builds / devices), and the memory snapshot it feeds.

    - ``window(on)``: the trace window of a full run (history on while the profiler
      records; the snapshot is written at the end of the first window, stacks included);
    - ``guard(step, peak, reserved)``: after a measured step, arms the history for the rest
      of the run once ``guard_should_arm`` says an OOM is near, so that the snapshot of an
      OOM that follows has stacks;
    - an allocator that cannot record (cudaMallocAsync) or a failing call leaves the
      history off with ``reason`` recorded, and the run goes on.
    ``to_json()`` is the record for run.json.
    """

    def __init__(self, device: torch.device, max_entries: int = 100_000,
                 path: str | None = None, backend: str | None = None) -> None:
        self.device = device
        self.active = device.type == "cuda" and torch.cuda.is_available()
        self.max_entries = max_entries
        self.path = path
        self.reason: str | None = None
        if self.active:
            self.reason = history_unsupported(backend or torch.cuda.get_allocator_backend())
        self.async_backend = self.reason is not None
        self.recording = False
        self.window_on = False
        self.windows = 0
        self.guard_step: int | None = None
        self.dumped_with_stacks = False

    def _set(self, on: bool) -> None:
        if not self.active or self.reason is not None or on == self.recording:
            return
        try:
            if on:
                torch.cuda.memory._record_memory_history(stacks="python",
                                                         max_entries=self.max_entries)
            else:
                torch.cuda.memory._record_memory_history(enabled=None)
        except RuntimeError as exc:
            self.reason = f"memory history unavailable: {exc}"
            return
        self.recording = on

    def start(self) -> None:
        """History on now (until ``stop``), whatever the window and guard say."""
        self.window_on = True
        self._set(True)

    def window(self, on: bool) -> None:
        if on and not self.window_on:
            self.windows += 1
        if not on and self.window_on and self.recording and self.path is not None \
                and not self.dumped_with_stacks:
            self.dumped_with_stacks = self.dump(self.path)
        self.window_on = on
        self._set(on or self.guard_step is not None)

    def guard(self, step: int, peak_allocated: int | None, reserved: int | None) -> None:
        if not self.active or self.guard_step is not None or peak_allocated is None:
            return
        free, total = torch.cuda.mem_get_info(self.device)
        if guard_should_arm(total, free, reserved or 0, peak_allocated):
            self.guard_step = step
            self._set(True)

    def dump(self, path: str) -> bool:
        if not self.active or self.async_backend:
            return False
        try:
            torch.cuda.memory._dump_snapshot(path)
        except RuntimeError as exc:
            self.reason = self.reason or f"memory snapshot unavailable: {exc}"
            return False
        return True

    def stop(self) -> None:
        self.window_on = False
        self._set(False)

    def to_json(self) -> dict[str, Any] | None:
        if not self.active:
            return None
        return {"python_stacks": "trace window and OOM guard", "windows": self.windows,
                "guard_headroom": OOM_GUARD_HEADROOM, "guard_armed_at_step": self.guard_step,
                "unavailable": self.reason}
