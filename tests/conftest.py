"""Shared fixtures: tiny model configs that run in milliseconds on a CPU."""

from __future__ import annotations

import pytest

from energy_flow.config import EnergyConfig, make_config

TINY = dict(lattice_width=4, lattice_height=4, lattice_depth=4, batch_size=2, carrier_hidden=16,
            carrier_layers=1, mapper_hidden=32, max_flows=1000)


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
