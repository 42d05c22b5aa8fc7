"""The hardware-independent logic of the CUDA paths, run on the CPU: device validation,
failure classification, memory-history policy (window, OOM guard, cudaMallocAsync)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from energy_flow.config import ConfigError, make_config
from energy_flow.runtime import resolve_device
from profiler.collect.failure import failure_status
from profiler.collect.nvml import NvmlConfig
from profiler.collect.session import ProfileOptions, ProfileSession
from profiler.collect.stats import CudaSnapshot, guard_should_arm, history_unsupported
from profiler.collect.tracing import TraceSchedule
from profiler.collect.workload import make_energy_flow_workload

GiB = 2**30


@pytest.mark.parametrize("name, count, expected", [
    ("cuda:1", 2, torch.device("cuda:1")),
    ("cuda", 1, torch.device("cuda")),
    ("auto", 0, torch.device("cpu")),
    ("auto", 2, torch.device("cuda")),
    ("cpu", 0, torch.device("cpu")),
])
def test_devices_that_exist_resolve(name, count, expected):
    assert resolve_device(name, cuda_count=count) == expected


@pytest.mark.parametrize("name, count, message", [
    ("cuda:2", 2, "device 'cuda:2' does not exist: 2 CUDA devices visible (cuda:0 to cuda:1)"),
    ("cuda:1", 1, "device 'cuda:1' does not exist: 1 CUDA device visible (cuda:0)"),
    ("cuda:0", 0, "device 'cuda:0' requested but CUDA is not available"),
    ("tpu", 1, "unknown device 'tpu'"),
])
def test_devices_that_do_not_exist_are_one_clear_error(name, count, message):
    with pytest.raises(ConfigError) as info:
        resolve_device(name, cuda_count=count)
    assert str(info.value).startswith(message)


def test_a_session_on_a_missing_device_writes_nothing(tmp_path, tiny_overrides):
    tiny = tiny_overrides
    options = ProfileOptions(
        run_dir=tmp_path / "r", name="r", preset="debug", variant="after", pool="off",
        mode="light", steps=2, warmup=0, monitor_interval=1, overrides=tiny,
        nvml=NvmlConfig(), trace=TraceSchedule())
    missing = torch.device(f"cuda:{torch.cuda.device_count() + 7}")
    session = ProfileSession(options, make_config("debug", **tiny), missing,
                             make_energy_flow_workload, log=io.StringIO())
    with pytest.raises(ConfigError, match="cuda:"):
        session.run()
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [
    ["-m", "energy_flow", "train", "--steps", "1"],
    ["-m", "profiler", "profile", "--steps", "2", "--mode", "light"],
])
def test_the_clis_refuse_a_missing_cuda_device_in_one_line(tmp_path, command):
    index = torch.cuda.device_count() + 7
    proc = subprocess.run([sys.executable, *command, "--device", f"cuda:{index}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cuda:{index}" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("exc, status", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
     "oom"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "oom"),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously "
                  "reported"), "oom"),
    (RuntimeError("CUDA driver error: CUDA_ERROR_OUT_OF_MEMORY"), "oom"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                  "memory: you tried to allocate 1099511627776 bytes"), "oom"),
    (MemoryError(), "oom"),
    (RuntimeError("CUDA error: device-side assert triggered"), "failed"),
    (ValueError("out of memory"), "failed"),  # not an allocator's error
])
def test_failures_are_classified(exc, status):
    assert failure_status(exc) == status


def test_a_real_cpu_out_of_memory_is_oom():
    with pytest.raises(RuntimeError) as info:
        torch.empty(1 << 60, dtype=torch.uint8)
    assert failure_status(info.value) == "oom"


def test_memory_history_policy():
    assert history_unsupported("native") is None
    assert "cudaMallocAsync" in history_unsupported("cudaMallocAsync")
    # 80 GiB device, 1 GiB context: a 70 GiB peak leaves 9 GiB (> 8 GiB): not armed
    assert not guard_should_arm(80 * GiB, 80 * GiB - 71 * GiB, 70 * GiB, 70 * GiB)
    # a 72 GiB peak leaves 7 GiB: armed
    assert guard_should_arm(80 * GiB, 80 * GiB - 73 * GiB, 72 * GiB, 72 * GiB)
    # cached memory is not pressure: 75 GiB reserved, a 10 GiB peak
    assert not guard_should_arm(80 * GiB, 4 * GiB, 75 * GiB, 10 * GiB)
    # another process holding 60 GiB counts
    assert guard_should_arm(80 * GiB, 10 * GiB, 10 * GiB, 13 * GiB)


def test_memory_history_is_a_no_op_on_cpu(tmp_path):
    snap = CudaSnapshot(torch.device("cpu"), path=str(tmp_path / "s.pickle"))
    snap.window(True)
    snap.guard(0, 10, 10)
    snap.window(False)
    snap.stop()
    assert not snap.active and not snap.recording and snap.to_json() is None
    assert not snap.dump(str(tmp_path / "s.pickle"))
    assert not (tmp_path / "s.pickle").exists()
