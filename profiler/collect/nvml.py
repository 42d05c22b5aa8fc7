"""Every NVML call of the package lives here (nvidia-ml-py, module ``pynvml``).

A background thread samples each watched GPU at ``NvmlConfig.interval_s``
(never faster than 0.5 s) and this process's GPU memory at the slower
``process_interval_s``. Readings are plain dicts so that the parsing and the
reconciliation with PyTorch's allocator can be checked on recorded values:

    raw = {"total": int, "used": int,                  # bytes (None if unsupported)
           "util_gpu": int, "util_mem": int,           # percent
           "power_mw": int, "temperature_c": int,
           "processes": [(pid, used_bytes_or_None), ...] or None (not sampled now),
           "lost": bool}

``reading_row(ts, gpu, raw, pid, torch_mem)`` turns one reading into an
``nvml.csv`` row (columns ``profiler.rundir.NVML_COLUMNS``). An unsupported
metric stays empty for that metric only; a GPU that stops answering gives a
row with ``lost = 1`` and nothing else, never a crash.

Reconciliation (CUDA): used = torch allocated + allocator cache
(reserved - allocated) + non-torch (context, libraries, other processes).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from profiler.rundir import NVML_COLUMNS

MIN_INTERVAL_S = 0.5


@dataclass(frozen=True)
class NvmlConfig:
    interval_s: float = 1.0          # device sample period (>= MIN_INTERVAL_S)
    process_interval_s: float = 5.0  # this process's memory: a slower period
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.interval_s < MIN_INTERVAL_S:
            raise ValueError(f"nvml interval must be >= {MIN_INTERVAL_S} s, got {self.interval_s}")
        if self.process_interval_s < self.interval_s:
            raise ValueError(
                f"nvml process interval ({self.process_interval_s} s) must be >= the sample "
                f"interval ({self.interval_s} s)"
            )


@dataclass
class NvmlStatus:
    available: bool
    reason: str | None = None
    driver: str | None = None
    nvml_version: str | None = None
    gpus: list[int] = field(default_factory=list)

    def to_json(self, interval_s: float) -> dict[str, Any]:
        return {"available": self.available, "reason": self.reason, "interval_s": interval_s,
                "gpus": self.gpus}


def reading_row(ts: float, gpu: int, raw: dict[str, Any], pid: int,
                torch_mem: tuple[int, int] | None) -> dict[str, Any]:
    """One ``nvml.csv`` row from a raw reading; ``torch_mem`` = (allocated, reserved) bytes.

    Empty (None) wherever NVML did not report the metric. ``process_bytes`` is
    the sum of this pid's entries in the process list (None when the list was
    not sampled this time or the driver hides per-process memory).
    """
    row: dict[str, Any] = dict.fromkeys(NVML_COLUMNS)
    row.update(ts=ts, gpu=gpu, lost=1 if raw.get("lost") else 0)
    if raw.get("lost"):
        return row
    row["used_bytes"] = raw.get("used")
    row["total_bytes"] = raw.get("total")
    row["util_gpu_pct"] = raw.get("util_gpu")
    row["util_mem_pct"] = raw.get("util_mem")
    power = raw.get("power_mw")
    row["power_w"] = None if power is None else power / 1000.0
    row["temperature_c"] = raw.get("temperature_c")
    procs = raw.get("processes")
    if procs is not None:
        mine = [used for p, used in procs if p == pid]
        if mine and all(u is not None for u in mine):
            row["process_bytes"] = sum(mine)
    if torch_mem is not None:
        allocated, reserved = torch_mem
        row["torch_allocated_bytes"] = allocated
        row["torch_cache_bytes"] = reserved - allocated
        if row["used_bytes"] is not None:
            row["non_torch_bytes"] = row["used_bytes"] - reserved
    return row


def _pynvml():
    import pynvml  # nvidia-ml-py

    return pynvml


def _metric(fn: Callable[[], Any], nvml) -> Any:
    """Call one NVML getter; None when unsupported. A lost GPU propagates."""
    try:
        return fn()
    except nvml.NVMLError_GpuIsLost:
        raise
    except nvml.NVMLError:
        return None


def read_device(nvml, handle, with_processes: bool) -> dict[str, Any]:
    """Raw reading of one GPU (see the module docstring); ``lost`` if it stopped answering."""
    try:
        mem = _metric(lambda: nvml.nvmlDeviceGetMemoryInfo(handle), nvml)
        util = _metric(lambda: nvml.nvmlDeviceGetUtilizationRates(handle), nvml)
        raw: dict[str, Any] = {
            "total": None if mem is None else int(mem.total),
            "used": None if mem is None else int(mem.used),
            "util_gpu": None if util is None else int(util.gpu),
            "util_mem": None if util is None else int(util.memory),
            "power_mw": _metric(lambda: nvml.nvmlDeviceGetPowerUsage(handle), nvml),
            "temperature_c": _metric(
                lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU), nvml),
            "processes": None,
            "lost": False,
        }
        if with_processes:
            procs = _metric(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle), nvml)
            if procs is not None:
                raw["processes"] = [
                    (int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
                    for p in procs
                ]
        return raw
    except nvml.NVMLError_GpuIsLost:
        return {"lost": True}


def _nvml_index(nvml, device: torch.device) -> int:
    """NVML index of a torch CUDA device, matched by PCI bus id (CUDA_VISIBLE_DEVICES-safe)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        pci = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        try:
            handle = nvml.nvmlDeviceGetHandleByPciBusId(pci)
            return int(nvml.nvmlDeviceGetIndex(handle))
        except nvml.NVMLError:
            pass
    return int(index)


class NvmlSampler:
    """Background sampler thread. ``start()`` never raises for a missing GPU or NVML."""

    def __init__(self, config: NvmlConfig, device: torch.device,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.device = device
        self.clock = clock
        self.status = NvmlStatus(available=False, reason="not started")
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None
        self._handles: list[tuple[int, Any]] = []

    def start(self) -> NvmlStatus:
        if not self.config.enabled:
            self.status = NvmlStatus(False, "NVML unavailable: disabled by option")
            return self.status
        try:
            nvml = _pynvml()
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError
            self.status = NvmlStatus(False, f"NVML unavailable: {exc or type(exc).__name__}")
            return self.status
        self._nvml = nvml
        try:
            if self.device.type == "cuda":
                indices = [_nvml_index(nvml, self.device)]
            else:
                indices = list(range(nvml.nvmlDeviceGetCount()))
            self._handles = [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in indices]
            driver = nvml.nvmlSystemGetDriverVersion()
            version = nvml.nvmlSystemGetNVMLVersion()
        except nvml.NVMLError as exc:
            nvml.nvmlShutdown()
            self._nvml = None
            self.status = NvmlStatus(False, f"NVML unavailable: {exc}")
            return self.status
        self.status = NvmlStatus(True, None, _text(driver), _text(version),
                                 [i for i, _ in self._handles])
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self.status

    def _torch_mem(self) -> tuple[int, int] | None:
        if self.device.type != "cuda":
            return None
        return (torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device))

    def sample_once(self, with_processes: bool) -> None:
        nvml = self._nvml
        pid = os.getpid()
        torch_mem = self._torch_mem()
        ts = self.clock()
        rows = [reading_row(ts, i, read_device(nvml, h, with_processes), pid, torch_mem)
                for i, h in self._handles]
        with self._lock:
            self._rows.extend(rows)

    def _loop(self) -> None:
        next_process = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            with_processes = now >= next_process
            if with_processes:
                next_process = now + self.config.process_interval_s
            self.sample_once(with_processes)
            self._stop.wait(self.config.interval_s)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._rows)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
