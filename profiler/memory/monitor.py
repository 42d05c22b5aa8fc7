"""Memory pressure (``MemoryMonitor``) and the cleanup policy it drives (``MemoryOptimizer``).

Pressure is a number in [0, 1]:
- CUDA device: 1 - free / total from ``torch.cuda.mem_get_info`` (all processes
  on the GPU count, as they do for an out-of-memory error);
- ``source="nvml"``: used / total from NVML through ``profiler.collect.nvml.NvmlDevice``,
  falling back to ``mem_get_info`` when NVML cannot answer (``nvml_problem`` says why).
  Pass the run's NVML owner (``nvml=sampler.owner``) to share its session; without one
  the monitor opens its own and ``close()`` (or ``with``) shuts it down;
- CPU: this process's resident set size over the cgroup memory limit when one
  is set (``/sys/fs/cgroup/memory.max``, or cgroup v1's ``memory.limit_in_bytes``),
  else over the machine's total RAM.

Each check at or above a threshold records an ``Alert`` (level, pressure, time).
"""

from __future__ import annotations

import gc
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
import torch

SOURCES = ("auto", "cuda", "nvml", "process")
LEVELS = ("ok", "moderate", "critical")
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"),
                  Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


@dataclass(frozen=True)
class MonitorConfig:
    moderate_threshold: float = 0.8   # trim cached / low-priority pool memory from here
    critical_threshold: float = 0.95  # empty every pool, gc, release the allocator cache
    source: str = "auto"              # auto | cuda | nvml | process
    max_alerts: int = 100             # alerts kept (oldest dropped)

    def __post_init__(self) -> None:
        if not 0.0 < self.moderate_threshold <= self.critical_threshold <= 1.0:
            raise ValueError(
                "thresholds must satisfy 0 < moderate_threshold <= critical_threshold <= 1, got "
                f"{self.moderate_threshold} and {self.critical_threshold}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.max_alerts < 0:
            raise ValueError(f"max_alerts must be >= 0, got {self.max_alerts}")


@dataclass(frozen=True)
class Reading:
    pressure: float
    used_bytes: int
    limit_bytes: int
    source: str  # cuda | nvml | process-rss/cgroup | process-rss/ram
    ts: float


@dataclass(frozen=True)
class Alert:
    level: str  # moderate | critical
    pressure: float
    source: str
    ts: float
    message: str


def cgroup_limit_bytes() -> int | None:
    """The cgroup memory limit of this process, or None when there is none."""
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text and text != "max" and int(text) < 1 << 60:
            return int(text)
    return None


class MemoryMonitor:
    """``check_memory_pressure()`` -> 0..1 for ``device``; alerts per the config's thresholds."""

    def __init__(self, config: MonitorConfig | None = None,
                 device: torch.device | str | None = None, nvml: Any = None):
        self.config = config or MonitorConfig()
        self.device = torch.device(device if device is not None else "cpu")
        if self.config.source in ("cuda", "nvml") and self.device.type != "cuda":
            raise ValueError(f"source {self.config.source!r} needs a CUDA device, got {self.device}")
        self.alerts: deque[Alert] = deque(maxlen=self.config.max_alerts or None)
        self.last: Reading | None = None
        self._process = psutil.Process()
        self._nvml: Any = nvml  # a profiler.collect.nvml.NvmlDevice (shared or our own)
        self._owns_nvml = False
        self.nvml_problem: str | None = None

    def close(self) -> None:
        """Shut down the NVML session this monitor opened itself (a shared one stays open)."""
        if self._owns_nvml and self._nvml is not None:
            self._nvml.close()
        self._nvml, self._owns_nvml = None, False

    def __enter__(self) -> MemoryMonitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def read(self) -> Reading:
        """One measurement, without alerting."""
        now = time.time()
        if self.device.type == "cuda" and self.config.source != "process":
            if self.config.source == "nvml":
                reading = self._read_nvml(now)
                if reading is not None:
                    return reading
            free, total = torch.cuda.mem_get_info(self.device)
            return Reading(1.0 - free / total, total - free, total, "cuda", now)
        rss = self._process.memory_info().rss
        limit = cgroup_limit_bytes()
        source = "process-rss/cgroup"
        if limit is None:
            limit, source = psutil.virtual_memory().total, "process-rss/ram"
        return Reading(min(1.0, rss / limit), rss, limit, source, now)

    def check_memory_pressure(self) -> float:
        """Pressure in [0, 1]; records an alert when a threshold is reached."""
        reading = self.read()
        self.last = reading
        level = self.level(reading.pressure)
        if level != "ok":
            self.alerts.append(Alert(
                level, reading.pressure, reading.source, reading.ts,
                f"memory pressure {level}: {reading.pressure:.1%} of "
                f"{reading.limit_bytes / 2**30:.2f} GiB ({reading.source})"))
        return reading.pressure

    def level(self, pressure: float) -> str:
        if pressure >= self.config.critical_threshold:
            return "critical"
        if pressure >= self.config.moderate_threshold:
            return "moderate"
        return "ok"

    def _read_nvml(self, now: float) -> Reading | None:
        if self.nvml_problem is not None:
            return None
        if self._nvml is None:
            from profiler.collect.nvml import NvmlDevice

            owner = NvmlDevice(self.device)
            try:
                owner.open()
            except Exception as exc:  # NVML is optional: fall back to mem_get_info
                self.nvml_problem = f"NVML unavailable: {type(exc).__name__}: {exc}"
                return None
            self._nvml, self._owns_nvml = owner, True
        try:
            raw = self._nvml.read(False)
        except Exception as exc:  # a closed shared owner, a dead driver: fall back
            self.nvml_problem = f"NVML read failed: {type(exc).__name__}: {exc}"
            return None
        if raw.get("lost") or not raw.get("total") or raw.get("used") is None:
            return None
        return Reading(raw["used"] / raw["total"], raw["used"], raw["total"], "nvml", now)


class Trimmable(Protocol):
    def trim(self, level: str) -> int: ...


@dataclass
class OptimizationRecord:
    ts: float
    pressure: float
    level: str
    freed_bytes: int
    actions: list[str] = field(default_factory=list)


class MemoryOptimizer:
    """Applies the cleanup policy to pools according to the monitor's pressure.

    moderate: each pool's ``trim("moderate")`` (cached / low-priority idle memory);
    critical: each pool's ``trim("critical")`` (every pool emptied), ``gc.collect()``
    and, on CUDA, ``torch.cuda.empty_cache()``.
    """

    def __init__(self, monitor: MemoryMonitor, pools: list[Trimmable] | tuple[Trimmable, ...]):
        for p in pools:
            if not callable(getattr(p, "trim", None)):
                raise TypeError(f"{type(p).__name__} has no trim(level) method")
        self.monitor = monitor
        self.pools = list(pools)
        self.history: list[OptimizationRecord] = []

    def optimize(self) -> OptimizationRecord:
        pressure = self.monitor.check_memory_pressure()
        level = self.monitor.level(pressure)
        record = OptimizationRecord(time.time(), pressure, level, 0)
        if level == "ok":
            return record
        for p in self.pools:
            record.freed_bytes += p.trim(level)
            record.actions.append(f"trim({level}) {type(p).__name__}")
        if level == "critical":
            gc.collect()
            record.actions.append("gc.collect")
            if self.monitor.device.type == "cuda":
                torch.cuda.empty_cache()
                record.actions.append("torch.cuda.empty_cache")
        self.history.append(record)
        return record
