"""Every NVML call of the package lives here (nvidia-ml-py, module ``pynvml``).

``NvmlDevice`` is the one NVML owner of a run: it initializes NVML once, finds
the NVML handle of the run's CUDA device, reads it, and shuts NVML down once.
The ``NvmlSampler`` thread and the ``MemoryMonitor`` share it. The ``pynvml``
module is the one boundary: ``NvmlDevice(device, nvml=module)`` takes any
module with pynvml's names (tests hand in a fake one).

Only a CUDA run is sampled, and only its own device: a CPU run does not touch
NVML (status "NVML unavailable: not sampled on a cpu run").

Identity: the CUDA device's UUID (``torch.cuda.get_device_properties().uuid``)
is looked up in NVML as ``GPU-<uuid>`` and, for a MIG instance, ``MIG-<uuid>``,
so ``CUDA_VISIBLE_DEVICES`` and MIG never map the run to another GPU. Without a
UUID match the PCI bus id is used; on a GPU with MIG enabled that is the parent
GPU, and ``identity["scope"]`` says so.

Readings are plain dicts so that parsing and reconciliation can be checked on
recorded values:

    raw = {"total": int, "used": int,                  # bytes (None if unsupported)
           "util_gpu": int, "util_mem": int,           # percent
           "power_mw": int, "temperature_c": int,
           "processes": [(pid, used_bytes_or_None), ...] or None (not sampled now),
           "lost": bool}

``reading_row(ts, gpu, raw, pid, torch_mem)`` turns one reading into an
``nvml.csv`` row (columns ``profiler.rundir.NVML_COLUMNS``). Any failure of a
getter (an ``NVMLError``, or anything else nvidia-ml-py raises, such as its
``NVMLLibraryMismatchError`` on drivers without the ``_v3`` process query)
leaves that metric empty and is recorded once as "unavailable: <reason>" in
``NvmlStatus.metrics``; a GPU that stops answering gives a row with
``lost = 1``; the sampler thread never dies of a reading.

Process memory: NVML lists processes by PID as the host sees them. The PID used
for matching is this process's PID in the outermost PID namespace visible in
``/proc/self/status`` (``NSpid``); inside a container that hides the host PID,
this process is absent from NVML's list although it holds CUDA memory, and
``metrics["process_bytes"]`` says so instead of leaving a blank that looks measured.

Reconciliation (CUDA): used = torch allocated + allocator cache
(reserved - allocated) + non-torch (context, libraries, other processes).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from profiler.rundir import NVML_COLUMNS

MIN_INTERVAL_S = 0.5
# nvml.csv metrics reported in NvmlStatus.metrics, with the raw keys they come from.
METRICS = {"used_bytes": "used", "util_gpu_pct": "util_gpu", "power_w": "power_mw",
           "temperature_c": "temperature_c", "process_bytes": "processes"}


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
    """What NVML gave: ``metrics`` maps each nvml.csv metric to "sampled",
    "unavailable: <reason>" or "not sampled" (no row had it, no error either)."""

    available: bool
    reason: str | None = None
    driver: str | None = None
    nvml_version: str | None = None
    gpus: list[int] = field(default_factory=list)
    identity: dict[str, Any] | None = None
    metrics: dict[str, str] = field(default_factory=dict)
    rows: int = 0

    def to_json(self, interval_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {"available": self.available, "reason": self.reason,
                               "interval_s": interval_s, "gpus": self.gpus}
        if self.available:
            out.update(identity=self.identity, metrics=self.metrics, rows=self.rows)
        return out


def reading_row(ts: float, gpu: int, raw: dict[str, Any], pid: int,
                torch_mem: tuple[int, int] | None) -> dict[str, Any]:
    """One ``nvml.csv`` row from a raw reading; ``torch_mem`` = (allocated, reserved) bytes.

    Empty (None) wherever NVML did not report the metric. ``process_bytes`` is
    the sum of this pid's entries in the process list (None when the list was
    not sampled this time, the pid is absent, or the driver hides per-process memory).
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


def outer_pid(status_text: str | None = None) -> int:
    """This process's PID in the outermost PID namespace ``/proc`` shows (``NSpid``'s first
    entry), which is what NVML lists when the container's /proc shows it; else ``os.getpid()``."""
    if status_text is None:
        try:
            with open("/proc/self/status") as f:
                status_text = f.read()
        except OSError:
            return os.getpid()
    for line in status_text.splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            if ids and ids[0].isdigit():
                return int(ids[0])
    return os.getpid()


def process_problem(procs: list[tuple[int, Any]] | None, pid: int, reserved: int | None
                    ) -> str | None:
    """Why ``process_bytes`` is empty for one sampled process list, or None when it is not
    (or when this process holds no CUDA memory, so absence is expected)."""
    if procs is None:
        return None
    mine = [used for p, used in procs if p == pid]
    if mine and any(u is None for u in mine):
        return "unavailable: the driver hides per-process memory (used = N/A)"
    if not mine and reserved:
        return (f"unavailable: this process (pid {pid}) holds CUDA memory but is not in "
                f"NVML's process list ({len(procs)} entries): NVML reports host PIDs, "
                f"and this PID namespace (a container) hides them")
    return None


def _pynvml():
    import pynvml  # nvidia-ml-py

    return pynvml


def _why(exc: BaseException) -> str:
    text = str(exc)
    return f"unavailable: {type(exc).__name__}" + (f": {text}" if text else "")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def uuid_text(value: Any) -> str | None:
    """The 8-4-4-4-12 hex UUID in ``str(value)`` (lower case, without a GPU-/MIG- prefix or
    a ``UUID('...')`` wrapper), or None when there is none."""
    if value is None:
        return None
    match = _UUID.search(str(value).lower())
    return match.group(0) if match else None


def _cuda_uuid(index: int) -> str | None:
    """The CUDA device's UUID (``torch.cuda.get_device_properties().uuid``), or None."""
    return uuid_text(getattr(torch.cuda.get_device_properties(index), "uuid", None))


class NvmlDevice:
    """The one NVML owner for one CUDA device: ``open()`` (nvmlInit, handle, identity),
    ``read(with_processes)``, ``close()`` (nvmlShutdown once). Thread-safe."""

    def __init__(self, device: torch.device, nvml: Any = None) -> None:
        if device.type != "cuda":
            raise ValueError(f"NVML reads CUDA devices only, got {device}")
        self.device = device
        self.nvml = nvml
        self.handle: Any = None
        self.index: int | None = None
        self.identity: dict[str, Any] | None = None
        self.driver: str | None = None
        self.version: str | None = None
        self.problems: dict[str, str] = {}  # metric -> first "unavailable: reason"
        self._lock = threading.Lock()
        self._open = False

    def open(self, cuda_uuid: str | None = None, pci_bus_id: str | None = None) -> None:
        """Initialize NVML and find this device's handle. ``cuda_uuid`` / ``pci_bus_id``
        default to torch's view of the device. Raises on any failure (NVML closed again)."""
        if self._open:
            raise RuntimeError("NVML device already open")
        nvml = self.nvml if self.nvml is not None else _pynvml()
        self.nvml = nvml
        nvml.nvmlInit()
        try:
            if cuda_uuid is None and pci_bus_id is None:
                cuda_uuid, pci_bus_id = self._torch_identity()
            self.handle, self.index, self.identity = self._find(nvml, cuda_uuid, pci_bus_id)
            self.driver = _text(nvml.nvmlSystemGetDriverVersion())
            self.version = _text(nvml.nvmlSystemGetNVMLVersion())
        except BaseException:
            nvml.nvmlShutdown()
            raise
        self._open = True

    def _torch_identity(self) -> tuple[str | None, str | None]:
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        pci = None
        bus = getattr(props, "pci_bus_id", None)
        if bus is not None:
            domain, dev = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", 0)
            pci = f"{domain:08x}:{bus:02x}:{dev:02x}.0"
        return _cuda_uuid(index), pci

    def _find(self, nvml, uuid: str | None, pci: str | None) -> tuple[Any, int, dict[str, Any]]:
        if uuid:
            for prefix, mig in (("GPU-", False), ("MIG-", True)):
                try:
                    handle = nvml.nvmlDeviceGetHandleByUUID((prefix + uuid).encode())
                except Exception:
                    continue
                index = self._parent_index(nvml, handle) if mig else int(
                    nvml.nvmlDeviceGetIndex(handle))
                scope = "MIG instance (memory is the instance's; utilization, power and "\
                        "temperature are unsupported or the parent GPU's)" if mig else "device"
                return handle, index, {"uuid": prefix + uuid, "matched_by": "uuid",
                                       "mig": mig, "scope": scope}
        if pci:
            try:
                handle = nvml.nvmlDeviceGetHandleByPciBusId(pci)
            except Exception:
                handle = None
            if handle is not None:
                mig = self._mig_enabled(nvml, handle)
                scope = ("parent GPU of a MIG instance: every figure is the whole GPU's"
                         if mig else "device")
                return handle, int(nvml.nvmlDeviceGetIndex(handle)), {
                    "uuid": _text(nvml.nvmlDeviceGetUUID(handle)), "matched_by": "pci_bus_id",
                    "mig": mig, "scope": scope}
        raise LookupError(f"no NVML device matches CUDA device {self.device} "
                          f"(uuid {uuid}, PCI bus id {pci})")

    @staticmethod
    def _parent_index(nvml, handle) -> int:
        parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
        return int(nvml.nvmlDeviceGetIndex(parent))

    @staticmethod
    def _mig_enabled(nvml, handle) -> bool:
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except Exception:  # not a MIG-capable GPU
            return False
        return current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)

    def _get(self, metric: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self.nvml.NVMLError_GpuIsLost:
            raise
        except Exception as exc:  # NVMLError or anything else: this metric only
            self.problems.setdefault(metric, _why(exc))
            return None

    def _processes(self) -> list[tuple[int, Any]] | None:
        nvml, handle = self.nvml, self.handle

        def query():
            try:
                return nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except nvml.NVMLError_GpuIsLost:
                raise
            except Exception:  # e.g. NVMLLibraryMismatchError: the driver lacks _v3
                v2 = getattr(nvml, "nvmlDeviceGetComputeRunningProcesses_v2", None)
                if v2 is None:
                    raise
                return v2(handle)

        procs = self._get("process_bytes", query)
        if procs is None:
            return None
        return [(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
                for p in procs]

    def read(self, with_processes: bool) -> dict[str, Any]:
        """Raw reading (module docstring); ``{"lost": True}`` if the GPU stopped answering."""
        if not self._open:
            raise RuntimeError("NVML device is not open")
        nvml, handle = self.nvml, self.handle
        with self._lock:
            try:
                mem = self._get("used_bytes", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
                util = self._get("util_gpu_pct",
                                 lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
                return {
                    "total": None if mem is None else int(mem.total),
                    "used": None if mem is None else int(mem.used),
                    "util_gpu": None if util is None else int(util.gpu),
                    "util_mem": None if util is None else int(util.memory),
                    "power_mw": self._get("power_w", lambda: nvml.nvmlDeviceGetPowerUsage(handle)),
                    "temperature_c": self._get("temperature_c", lambda: nvml.nvmlDeviceGetTemperature(
                        handle, nvml.NVML_TEMPERATURE_GPU)),
                    "processes": self._processes() if with_processes else None,
                    "lost": False,
                }
            except nvml.NVMLError_GpuIsLost:
                return {"lost": True}

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # shutting down a dead driver must not hide the run's result
            pass


class NvmlSampler:
    """Background sampler thread for a CUDA run's device. ``start()`` never raises for a
    missing GPU or NVML; starting it twice raises ``RuntimeError``. ``owner`` is the
    ``NvmlDevice`` to share (``MemoryMonitor(nvml=sampler.owner)``) while it runs."""

    def __init__(self, config: NvmlConfig, device: torch.device,
                 clock: Callable[[], float] = time.time, nvml: Any = None,
                 torch_mem: Callable[[], tuple[int, int] | None] | None = None,
                 pid: int | None = None) -> None:
        self.config = config
        self.device = device
        self.clock = clock
        self.status = NvmlStatus(available=False, reason="not started")
        self.owner: NvmlDevice | None = None
        self._module = nvml
        self._torch_mem_fn = torch_mem or self._torch_mem
        self._pid = outer_pid() if pid is None else pid
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    def start(self, cuda_uuid: str | None = None, pci_bus_id: str | None = None) -> NvmlStatus:
        if self._started:
            raise RuntimeError("NVML sampler already started (one start per sampler)")
        self._started = True
        if not self.config.enabled:
            self.status = NvmlStatus(False, "NVML unavailable: disabled by option")
            return self.status
        if self.device.type != "cuda":
            self.status = NvmlStatus(False, f"NVML unavailable: not sampled on a "
                                            f"{self.device.type} run")
            return self.status
        owner = NvmlDevice(self.device, self._module)
        try:
            owner.open(cuda_uuid, pci_bus_id)
        except Exception as exc:  # ImportError, LibraryNotFound, DriverNotLoaded, no match
            self.status = NvmlStatus(False, f"NVML unavailable: {_why(exc)[len('unavailable: '):]}")
            return self.status
        self.owner = owner
        assert owner.index is not None  # open() found the device
        self.status = NvmlStatus(True, None, owner.driver, owner.version, [owner.index],
                                 owner.identity)
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self.status

    def _torch_mem(self) -> tuple[int, int] | None:
        return (torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device))

    def sample_once(self, with_processes: bool) -> None:
        owner = self.owner
        assert owner is not None, "sample_once() before start() opened NVML"
        try:
            torch_mem = self._torch_mem_fn()
        except Exception as exc:
            owner.problems.setdefault("torch_allocated_bytes", _why(exc))
            torch_mem = None
        raw = owner.read(with_processes)
        problem = process_problem(raw.get("processes"), self._pid,
                                  None if torch_mem is None else torch_mem[1])
        if problem is not None:
            owner.problems.setdefault("process_bytes", problem)
        assert owner.index is not None
        row = reading_row(self.clock(), owner.index, raw, self._pid, torch_mem)
        with self._lock:
            self._rows.append(row)

    def _loop(self) -> None:
        next_process = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            with_processes = now >= next_process
            if with_processes:
                next_process = now + self.config.process_interval_s
            try:
                self.sample_once(with_processes)
            except Exception as exc:  # never a dead thread: the reason goes to run.json
                if self.owner is not None:
                    self.owner.problems.setdefault("sampler", _why(exc))
            self._stop.wait(self.config.interval_s)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._rows)

    def stop(self) -> NvmlStatus:
        """Stop the thread, shut NVML down, and complete ``status`` with what was sampled."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self.owner is not None:
            self.owner.close()
            rows = self.rows()
            self.status.rows = len(rows)
            self.status.metrics = sampled_metrics(rows, self.owner.problems)
            if not rows:  # opened, but nothing was measured: not "available"
                problems = "; ".join(f"{k}: {v}" for k, v in self.owner.problems.items())
                self.status.available = False
                self.status.reason = ("NVML unavailable: no sample was taken"
                                      + (f" ({problems})" if problems else ""))
        return self.status


def sampled_metrics(rows: list[dict[str, Any]], problems: dict[str, str]) -> dict[str, str]:
    """Per nvml.csv metric: "sampled" when some row has a value, else the recorded
    "unavailable: reason", else "not sampled"; plus any other recorded problem."""
    out = {}
    for column in METRICS:
        if any(r.get(column) is not None for r in rows):
            out[column] = "sampled"
        else:
            out[column] = problems.get(column, "not sampled")
    for key, reason in problems.items():
        out.setdefault(key, reason)
    return out
