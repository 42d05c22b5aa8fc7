"""Host conditions of a run: CPU model, threads, frequency governor, and load before /
during / after, so a report can tell when two timings were taken under different load.

``HostLoad.begin()`` and ``end()`` bracket the run; ``sample()`` (cheap: reads
``/proc/loadavg``) is called at monitor points. The figure that decides "under
load" is ``other_busy_cores``: CPU time the whole machine spent busy during the
run minus this process's own CPU time, divided by the wall time (cores kept busy
by other processes, on average). A run is ``under_load`` when other processes
kept at least ``max(0.25, 0.1 * logical CPUs)`` cores busy, or when the 1-minute
load average minus this run's own threads exceeded half the logical CPUs.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import psutil

TOP_PROCESSES = 5
SNAPSHOT_S = 0.3  # interval over which other processes' CPU share is measured before / after


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def governor() -> str | None:
    """cpufreq scaling governor of CPU 0 where the kernel exposes it."""
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        return None


def thread_settings() -> dict[str, Any]:
    import torch

    return {"torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
            "logical_cpus": psutil.cpu_count(logical=True),
            "physical_cpus": psutil.cpu_count(logical=False),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None}


def busy_processes(interval_s: float = SNAPSHOT_S, top: int = TOP_PROCESSES) -> dict[str, Any]:
    """Other processes' CPU use over ``interval_s``: total in cores and the busiest ones."""
    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid", "name"]):
        if p.info["pid"] == me:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    time.sleep(interval_s)
    usage = []
    for p in procs:
        try:
            usage.append((p.cpu_percent(None) / 100.0, p.info["name"], p.info["pid"]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    usage.sort(reverse=True)
    return {"other_busy_cores": round(sum(u for u, _, _ in usage), 3),
            "top": [{"name": n, "pid": pid, "cores": round(u, 3)}
                    for u, n, pid in usage[:top] if u > 0]}


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) \
        + getattr(t, "steal", 0.0)


def _own_seconds(process: psutil.Process) -> float:
    t = process.cpu_times()
    return t.user + t.system + getattr(t, "children_user", 0.0) \
        + getattr(t, "children_system", 0.0)


class HostLoad:
    """Collects the ``host_load`` record of run.json (see the module docstring)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._loads: list[float] = []
        self.record: dict[str, Any] = {}

    def begin(self) -> None:
        ncpu = psutil.cpu_count(logical=True) or 1
        allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else ncpu
        self.record = {"cpu_model": cpu_model(), "governor": governor(),
                       "threads": thread_settings(), "logical_cpus": ncpu,
                       "allowed_cpus": allowed,
                       "loadavg_before": list(os.getloadavg()),
                       "before": busy_processes()}
        freq = psutil.cpu_freq()
        if freq is not None:
            self.record["cpu_mhz"] = {"current": freq.current, "min": freq.min,
                                      "max": freq.max}
        self._t0 = time.monotonic()
        self._busy0 = _busy_seconds()
        self._own0 = _own_seconds(self._process)

    def sample(self) -> None:
        self._loads.append(os.getloadavg()[0])

    def end(self) -> dict[str, Any]:
        if not self.record:
            return {}
        wall = max(time.monotonic() - self._t0, 1e-9)
        busy = _busy_seconds() - self._busy0
        own = _own_seconds(self._process) - self._own0
        ncpu = self.record["logical_cpus"]
        self.sample()
        own_cores = own / wall
        other = max(0.0, (busy - own) / wall)
        r = self.record
        r["during"] = {"wall_s": round(wall, 3), "own_busy_cores": round(own_cores, 3),
                       "other_busy_cores": round(other, 3),
                       "other_busy_share": round(other / ncpu, 3),
                       "loadavg_1m_max": max(self._loads), "loadavg_1m_samples": len(self._loads)}
        r["loadavg_after"] = list(os.getloadavg())
        r["after"] = busy_processes()
        threshold = max(0.25, 0.1 * ncpu)
        own_threads = max(1.0, own_cores)
        reasons = []
        if other >= threshold:
            reasons.append(f"other processes kept {other:.2f} of {ncpu} CPUs busy during the "
                           f"run (threshold {threshold:.2f})")
        if max(self._loads) - own_threads > 0.5 * ncpu:
            reasons.append(f"1-minute load average reached {max(self._loads):.2f} on {ncpu} "
                           f"CPUs")
        r["under_load"] = bool(reasons)
        r["under_load_reasons"] = reasons
        r["rule"] = (f"under load when other processes keep >= {threshold:.2f} CPUs busy "
                     f"during the run, or the 1-minute load average minus this run's own "
                     f"busy CPUs exceeds {0.5 * ncpu:.1f}")
        return r
