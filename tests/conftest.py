"""Shared fixtures: the one tiny model config that runs in milliseconds on a CPU (as
overrides, as CLI ``--set`` arguments, as a config) and synthetic run directories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from energy_flow.config import EnergyConfig, make_config
from profiler import rundir

TINY = dict(lattice_width=4, lattice_height=4, lattice_depth=4, batch_size=2, carrier_hidden=16,
            carrier_layers=1, mapper_hidden=32, max_flows=1000)


@pytest.fixture(scope="session")
def tiny_overrides() -> dict:
    """The tiny config as field overrides (for ``ProfileOptions.overrides``)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_sets() -> list[str]:
    """The tiny config as command-line arguments: ``--set field=value`` pairs."""
    return [arg for field, value in TINY.items() for arg in ("--set", f"{field}={value}")]


@pytest.fixture(scope="session")
def tiny_config() -> EnergyConfig:
    return make_config("debug", **TINY)


@pytest.fixture(scope="session")
def write_run():
    """``write_run(path, **knobs)`` -> a synthetic run directory with known numbers."""
    return _write_run


@pytest.fixture
def make_tiny():
    """``make_tiny(**overrides)`` -> a debug config shrunk to a 4x4x4 lattice and 2 samples."""

    def build(**overrides) -> EnergyConfig:
        return make_config("debug", **{**TINY, **overrides})

    return build


@pytest.fixture
def tiny(make_tiny) -> EnergyConfig:
    return make_tiny()


class FakeNvml:
    """A stand-in for the ``pynvml`` module (NVML cannot load without a GPU driver), handed
    to ``profiler.collect.nvml`` at its one boundary. It has pynvml's names and error
    classes and answers from recorded values; ``fail`` maps a getter name to the exception
    it raises. ``calls`` counts nvmlInit / nvmlShutdown."""

    class NVMLError(Exception):
        pass

    class NVMLError_GpuIsLost(NVMLError):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLLibraryMismatchError(Exception):  # pynvml's: not an NVMLError
        pass

    NVML_TEMPERATURE_GPU = 0
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self, gpus=None, processes=None, fail=None, mig_mode=0, driver=b"560.35.03"):
        from types import SimpleNamespace

        self.gpus = gpus or [{"uuid": "GPU-aaaa-0000", "pci": "00000000:17:00.0"},
                             {"uuid": "GPU-bbbb-1111", "pci": "00000000:65:00.0"}]
        self.processes = processes if processes is not None else [(4242, 3 << 30)]
        self.fail = dict(fail or {})
        self.mig_mode = mig_mode
        self.driver = driver
        self.calls = {"nvmlInit": 0, "nvmlShutdown": 0}
        self._ns = SimpleNamespace

    def _check(self, name):
        if name in self.fail:
            raise self.fail[name]

    def nvmlInit(self):
        self._check("nvmlInit")
        self.calls["nvmlInit"] += 1

    def nvmlShutdown(self):
        self.calls["nvmlShutdown"] += 1

    def nvmlSystemGetDriverVersion(self):
        return self.driver

    def nvmlSystemGetNVMLVersion(self):
        return "12.560.35.03"

    def _by(self, key, value):
        for i, g in enumerate(self.gpus):
            if g.get(key) == value:
                return ("gpu", i)
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if not isinstance(uuid, bytes):  # pynvml passes it to c_char_p: bytes only
            raise TypeError("bytes or integer address expected instead of str instance")
        text = uuid.decode()
        for i, g in enumerate(self.gpus):
            if g["uuid"] == text:
                return ("gpu", i)
            for j, m in enumerate(g.get("mig", [])):
                if m == text:
                    return ("mig", i, j)
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetHandleByPciBusId(self, pci):
        return self._by("pci", pci)

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetIndex(self, handle):
        if handle[0] != "gpu":
            raise self.NVMLError_NotSupported("Not Supported")
        return handle[1]

    def nvmlDeviceGetUUID(self, handle):
        return self.gpus[handle[1]]["uuid"]

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle):
        return ("gpu", handle[1])

    def nvmlDeviceGetMigMode(self, handle):
        return [self.mig_mode, self.mig_mode]

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._check("nvmlDeviceGetMemoryInfo")
        if handle[0] == "mig":
            return self._ns(total=10 << 30, used=2 << 30, free=8 << 30)
        return self._ns(total=80 << 30, used=(30 + handle[1]) << 30, free=50 << 30)

    def nvmlDeviceGetUtilizationRates(self, handle):
        self._check("nvmlDeviceGetUtilizationRates")
        if handle[0] == "mig":
            raise self.NVMLError_NotSupported("Not Supported")
        return self._ns(gpu=90 + handle[1], memory=40)

    def nvmlDeviceGetPowerUsage(self, handle):
        self._check("nvmlDeviceGetPowerUsage")
        return 300_000 + 1000 * handle[1]

    def nvmlDeviceGetTemperature(self, handle, sensor):
        self._check("nvmlDeviceGetTemperature")
        return 60 + handle[1]

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self._check("nvmlDeviceGetComputeRunningProcesses")
        return [self._ns(pid=p, usedGpuMemory=u) for p, u in self.processes]

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle):
        self._check("nvmlDeviceGetComputeRunningProcesses_v2")
        return [self._ns(pid=p, usedGpuMemory=u) for p, u in self.processes]


@pytest.fixture
def fake_nvml():
    """``fake_nvml(**kwargs)`` -> a ``FakeNvml`` (see its docstring)."""
    return FakeNvml

REGIONS = ("mapper", "flow_init", "neuron", "carrier", "collect", "loss", "backward", "other")


def _write_run(path: Path, *, name: str | None = None, steps: int = 40, warmup: int = 5,
              wall_ms: float = 20.0, jitter: float = 0.02, carrier_scale: float = 1.0,
              seed: int = 0, status: str = "complete", preset: str = "debug",
              device: str = "cpu", lattice: tuple[int, int, int] = (4, 4, 4),
              nvml: bool = False, pool: bool = False, growth_per_step: int = 0,
              batch_size: int = 2) -> Path:
    """A complete run directory whose numbers are known: step times wall_ms * (1 + noise),
    region memory fixed per region (carrier scaled by ``carrier_scale``)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    n = np.arange(steps)
    wall = wall_ms * (1 + jitter * rng.standard_normal(steps))
    allocated = 1_000_000 + growth_per_step * n
    steps_df = pd.DataFrame({
        "step": n, "phase": np.where(n < warmup, "warmup", "measured"), "wall_ms": wall,
        "forward_ms": wall * 0.5, "backward_ms": wall * 0.3, "optimizer_ms": wall * 0.1,
        "loss": 1.0 / (n + 1), "skipped": 0, "samples": batch_size, "flows_created": 40,
        "flows_live_peak": 32, "flows_completed": 30, "steps_taken": 2, "flow_steps": 64,
        "allocated_bytes": allocated, "reserved_bytes": allocated + 4096,
        "peak_bytes": allocated + int(500_000 * carrier_scale), "rss_bytes": 200_000_000 + n,
    })
    rundir.atomic_write_text(path / rundir.STEPS_CSV, steps_df.to_csv(index=False))
    rows = []
    for s in n:
        for i, region in enumerate(REGIONS):
            peak = (i + 1) * 100_000 * (carrier_scale if region == "carrier" else 1.0)
            rows.append({"step": s, "view": "region", "category": region,
                         "live_bytes": peak // 2, "peak_bytes": peak, "alloc_count": i + 1,
                         "alloc_bytes": peak, "free_count": i + 1, "free_bytes": peak})
        for j, role in enumerate(("parameter", "activation", "temporary")):
            rows.append({"step": s, "view": "role", "category": role, "live_bytes": 1000 * j,
                         "peak_bytes": 2000 * (j + 1), "alloc_count": j, "alloc_bytes": 100 * j,
                         "free_count": j, "free_bytes": 100 * j})
        if pool:
            rows.append({"step": s, "view": "pool", "category": "scratch", "live_bytes": 0,
                         "peak_bytes": 4096, "alloc_count": 4, "alloc_bytes": 4096,
                         "free_count": 4, "pool_hits": 3, "pool_misses": 1})
    memory = pd.DataFrame(rows).reindex(columns=list(rundir.MEMORY_COLUMNS))
    rundir.atomic_write_text(path / rundir.MEMORY_BY_CATEGORY_CSV, memory.to_csv(index=False))
    ops = pd.DataFrame({"name": ["aten::mm", "aten::gru", "aten::add"],
                        "count": [30, 10, 50],
                        "self_us": [3000.0, 9000.0 * carrier_scale, 500.0],
                        "total_us": [3500.0, 12000.0 * carrier_scale, 600.0],
                        "self_device_us": [0.0, 0.0, 0.0], "total_device_us": [0.0, 0.0, 0.0]})
    rundir.atomic_write_text(path / rundir.OPERATORS_CSV, ops.to_csv(index=False))
    if nvml:
        k = np.arange(20)
        nv = pd.DataFrame({"ts": 1e9 + k, "gpu": 0, "used_bytes": 3e9 + 1e6 * k,
                           "total_bytes": 80e9, "process_bytes": 2e9, "util_gpu_pct": 50,
                           "util_mem_pct": 20, "power_w": 200.0, "temperature_c": 50,
                           "torch_allocated_bytes": 1e9, "torch_cache_bytes": 1e9,
                           "non_torch_bytes": 1e9 + 1e6 * k, "lost": 0})
        rundir.atomic_write_text(path / rundir.NVML_CSV, nv.to_csv(index=False))
    width, height, depth = lattice
    meta = {
        "schema_version": rundir.SCHEMA_VERSION, "name": name or path.name, "status": status,
        "error": None, "command": ["python", "-m", "profiler", "profile"],
        "config": {"preset": preset, "overrides": {}, "variant": "after", "pool": "off",
                   "mode": "full", "model": {"preset": preset, "lattice_width": width,
                                             "lattice_height": height, "lattice_depth": depth,
                                             "batch_size": batch_size}},
        "seeds": {"model": 0, "data": 1},
        "versions": {"python": "3.x", "torch": "2.x", "cuda": None},
        "device": {"type": device, "name": device, "total_memory_bytes": None},
        "host": "host", "git_revision": "abc", "started_at": "t0", "ended_at": "t1",
        "steps_requested": steps, "steps_completed": steps, "warmup_steps": warmup,
        "nvml": {"available": nvml, "reason": None if nvml else "no NVIDIA GPU"},
        "trace": {"schedule": {"wait": 1, "warmup": 1, "active": 2, "repeat": 1}},
        "attribution": None,
    }
    rundir.write_json(path / rundir.RUN_JSON, meta)
    return path
