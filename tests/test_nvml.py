"""NVML: parsing and reconciliation on recorded readings; the unavailable path for real."""

from __future__ import annotations

import time

import pytest
import torch

from profiler.collect.nvml import (
    NvmlConfig,
    NvmlSampler,
    outer_pid,
    process_problem,
    reading_row,
    uuid_text,
)
from profiler.memory.monitor import MemoryMonitor, MonitorConfig
from profiler.rundir import NVML_COLUMNS

GiB = 2**30
PID = 4242


def recorded(**over):
    raw = {"total": 80 * GiB, "used": 30 * GiB, "util_gpu": 97, "util_mem": 41,
           "power_mw": 312_500, "temperature_c": 66,
           "processes": [(17, 2 * GiB), (PID, 27 * GiB)], "lost": False}
    raw.update(over)
    return raw


def test_row_from_a_full_reading_reconciles_with_the_allocator():
    row = reading_row(1000.5, 0, recorded(), PID, torch_mem=(20 * GiB, 26 * GiB))
    assert list(row) == list(NVML_COLUMNS)
    assert row["used_bytes"] == 30 * GiB and row["total_bytes"] == 80 * GiB
    assert row["process_bytes"] == 27 * GiB
    assert (row["util_gpu_pct"], row["util_mem_pct"]) == (97, 41)
    assert row["power_w"] == pytest.approx(312.5)
    assert row["temperature_c"] == 66 and row["lost"] == 0
    # used = torch allocated + allocator cache + non-torch
    assert row["torch_allocated_bytes"] == 20 * GiB
    assert row["torch_cache_bytes"] == 6 * GiB
    assert row["non_torch_bytes"] == 4 * GiB
    assert (row["torch_allocated_bytes"] + row["torch_cache_bytes"] + row["non_torch_bytes"]
            == row["used_bytes"])


def test_unsupported_metrics_stay_empty_one_by_one():
    row = reading_row(1.0, 1, recorded(power_mw=None, util_gpu=None, util_mem=None), PID,
                      torch_mem=None)
    assert row["power_w"] is None and row["util_gpu_pct"] is None
    assert row["used_bytes"] == 30 * GiB and row["temperature_c"] == 66
    assert row["torch_allocated_bytes"] is None and row["non_torch_bytes"] is None
    no_memory = reading_row(1.0, 1, recorded(used=None, total=None), PID, (GiB, 2 * GiB))
    assert no_memory["used_bytes"] is None and no_memory["non_torch_bytes"] is None
    assert no_memory["torch_cache_bytes"] == GiB


def test_process_memory_only_when_sampled_and_visible():
    assert reading_row(1.0, 0, recorded(processes=None), PID, None)["process_bytes"] is None
    assert reading_row(1.0, 0, recorded(processes=[(17, GiB)]), PID, None)["process_bytes"] is None
    hidden = recorded(processes=[(PID, None)])  # containers often hide per-process memory
    assert reading_row(1.0, 0, hidden, PID, None)["process_bytes"] is None
    two = recorded(processes=[(PID, GiB), (PID, 2 * GiB)])
    assert reading_row(1.0, 0, two, PID, None)["process_bytes"] == 3 * GiB


def test_a_lost_gpu_is_a_marked_row():
    row = reading_row(5.0, 2, {"lost": True}, PID, (GiB, GiB))
    assert row["lost"] == 1 and row["gpu"] == 2 and row["ts"] == 5.0
    assert all(row[c] is None for c in NVML_COLUMNS if c not in ("ts", "gpu", "lost"))


def test_interval_limits():
    with pytest.raises(ValueError, match="nvml interval must be >= 0.5"):
        NvmlConfig(interval_s=0.1)
    with pytest.raises(ValueError, match="process interval"):
        NvmlConfig(interval_s=2.0, process_interval_s=1.0)


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


@pytest.mark.skipif(_nvml_works(), reason="NVML is available here")
def test_unavailable_nvml_says_why_and_writes_no_rows():
    sampler = NvmlSampler(NvmlConfig(interval_s=0.5), torch.device("cuda:0"))
    status = sampler.start()  # the real pynvml: the library does not load here
    time.sleep(0.6)
    sampler.stop()
    assert status.available is False
    assert status.reason.startswith("NVML unavailable: ")
    assert len(status.reason) > len("NVML unavailable: ")
    assert sampler.rows() == []
    assert status.to_json(0.5) == {"available": False, "reason": status.reason,
                                   "interval_s": 0.5, "gpus": []}


# --- the sampler and its NVML owner, on a fake pynvml module handed to the boundary ---------

CUDA0 = torch.device("cuda:0")  # a device object only: nothing here touches CUDA


def started(fake, uuid="aaaa-0000", pci=None, config=None, torch_mem=(GiB, 2 * GiB)):
    sampler = NvmlSampler(config or NvmlConfig(interval_s=600, process_interval_s=600), CUDA0,
                          clock=lambda: 1.0, nvml=fake, torch_mem=lambda: torch_mem, pid=PID)
    return sampler, sampler.start(cuda_uuid=uuid, pci_bus_id=pci)


def test_a_cpu_run_never_opens_nvml(fake_nvml):
    fake = fake_nvml()
    sampler = NvmlSampler(NvmlConfig(), torch.device("cpu"), nvml=fake)
    status = sampler.start()
    sampler.stop()
    assert status.available is False
    assert status.reason == "NVML unavailable: not sampled on a cpu run"
    assert fake.calls == {"nvmlInit": 0, "nvmlShutdown": 0} and sampler.rows() == []


def test_the_device_is_found_by_uuid_not_by_index(fake_nvml):
    fake = fake_nvml(processes=[(17, GiB), (PID, 3 * GiB)])
    sampler, status = started(fake, uuid="bbbb-1111")  # CUDA's device 0 is NVML's GPU 1
    assert status.available and status.gpus == [1]
    assert status.identity == {"uuid": "GPU-bbbb-1111", "matched_by": "uuid", "mig": False,
                               "scope": "device"}
    sampler.sample_once(with_processes=True)
    final = sampler.stop()
    row = sampler.rows()[-1]
    assert row["gpu"] == 1 and row["used_bytes"] == 31 * GiB and row["power_w"] == 301.0
    assert row["process_bytes"] == 3 * GiB and row["non_torch_bytes"] == 29 * GiB
    assert final.rows == 2 and set(final.metrics.values()) == {"sampled"}
    assert fake.calls == {"nvmlInit": 1, "nvmlShutdown": 1}


def test_a_mig_instance_is_read_through_its_own_handle(fake_nvml):
    fake = fake_nvml(gpus=[{"uuid": "GPU-aaaa-0000", "pci": "p0", "mig": ["MIG-cccc-2222"]}])
    sampler, status = started(fake, uuid="cccc-2222")
    assert status.identity["mig"] is True and status.identity["uuid"] == "MIG-cccc-2222"
    assert status.gpus == [0]  # the parent's NVML index
    sampler.sample_once(with_processes=False)
    final = sampler.stop()
    row = sampler.rows()[-1]
    assert (row["used_bytes"], row["total_bytes"]) == (2 * GiB, 10 * GiB)  # the instance's
    assert row["util_gpu_pct"] is None
    assert final.metrics["util_gpu_pct"] == "unavailable: NVMLError_NotSupported: Not Supported"
    assert final.metrics["used_bytes"] == "sampled"


def test_a_pci_match_on_a_mig_gpu_says_the_figures_are_the_parents(fake_nvml):
    fake = fake_nvml(mig_mode=1)
    sampler, status = started(fake, uuid=None, pci="00000000:65:00.0")
    sampler.stop()
    assert status.gpus == [1] and status.identity["matched_by"] == "pci_bus_id"
    assert status.identity["mig"] is True
    assert "parent GPU of a MIG instance" in status.identity["scope"]


def test_no_matching_device_is_unavailable_with_the_reason(fake_nvml):
    fake = fake_nvml()
    sampler, status = started(fake, uuid="ffff-9999", pci="nowhere")
    assert status.available is False
    assert "no NVML device matches CUDA device cuda:0" in status.reason
    assert fake.calls == {"nvmlInit": 1, "nvmlShutdown": 1}


def test_a_driver_without_the_v3_process_query_falls_back_to_v2(fake_nvml):
    mismatch = fake_nvml.NVMLLibraryMismatchError("Unversioned function called")
    fake = fake_nvml(fail={"nvmlDeviceGetComputeRunningProcesses": mismatch})
    sampler, _ = started(fake)
    sampler.sample_once(with_processes=True)
    final = sampler.stop()
    assert sampler.rows()[0]["process_bytes"] == 3 * GiB
    assert final.metrics["process_bytes"] == "sampled"


def test_any_getter_failure_empties_one_metric_and_the_thread_keeps_sampling(fake_nvml):
    mismatch = fake_nvml.NVMLLibraryMismatchError("Unversioned function called")
    fake = fake_nvml(fail={"nvmlDeviceGetComputeRunningProcesses": mismatch,
                           "nvmlDeviceGetComputeRunningProcesses_v2": mismatch,
                           "nvmlDeviceGetPowerUsage": RuntimeError("boom")})
    sampler, status = started(fake, config=NvmlConfig(interval_s=0.5, process_interval_s=0.5))
    deadline = time.monotonic() + 30
    while len(sampler.rows()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    final = sampler.stop()
    rows = sampler.rows()
    assert status.available and len(rows) >= 3  # the thread lived past its first sample
    assert all(r["power_w"] is None and r["process_bytes"] is None for r in rows)
    assert all(r["used_bytes"] == 30 * GiB and r["temperature_c"] == 60 for r in rows)
    assert final.metrics["power_w"] == "unavailable: RuntimeError: boom"
    assert final.metrics["process_bytes"] == (
        "unavailable: NVMLLibraryMismatchError: Unversioned function called")
    assert final.metrics["used_bytes"] == final.metrics["temperature_c"] == "sampled"
    assert final.to_json(0.5)["rows"] == len(rows)


def test_a_sampler_that_never_managed_a_row_says_so(fake_nvml):
    sampler = NvmlSampler(NvmlConfig(interval_s=0.5, process_interval_s=0.5), CUDA0,
                          nvml=fake_nvml(), torch_mem=lambda: (1,), pid=PID)  # unusable
    assert sampler.start(cuda_uuid="aaaa-0000").available
    time.sleep(1.2)  # three attempts, each failing inside the thread
    assert sampler._thread.is_alive()
    final = sampler.stop()
    assert sampler.rows() == [] and final.available is False
    assert final.reason.startswith("NVML unavailable: no sample was taken (sampler: "
                                   "unavailable: IndexError: tuple index out of range)")
    assert final.to_json(0.5) == {"available": False, "reason": final.reason,
                                  "interval_s": 0.5, "gpus": [0]}


def test_a_lost_gpu_gives_lost_rows(fake_nvml):
    fake = fake_nvml(fail={"nvmlDeviceGetMemoryInfo": fake_nvml.NVMLError_GpuIsLost("lost")})
    sampler, _ = started(fake)
    sampler.sample_once(with_processes=True)
    sampler.stop()
    assert sampler.rows()[0]["lost"] == 1


def test_a_container_hiding_host_pids_is_said_not_left_blank(fake_nvml):
    fake = fake_nvml(processes=[(913_377, 3 * GiB)])  # the host's PID of this process
    sampler, _ = started(fake)
    sampler.sample_once(with_processes=True)
    final = sampler.stop()
    assert sampler.rows()[0]["process_bytes"] is None
    assert final.metrics["process_bytes"].startswith(
        f"unavailable: this process (pid {PID}) holds CUDA memory but is not in NVML's "
        "process list (1 entries)")


def test_process_problems_and_the_outer_pid():
    assert process_problem(None, 1, GiB) is None
    assert process_problem([(1, GiB)], 1, GiB) is None
    assert process_problem([(2, GiB)], 1, 0) is None  # no CUDA memory: absence is expected
    assert "hides per-process memory" in process_problem([(1, None)], 1, GiB)
    assert outer_pid("Name:\tpython\nNSpid:\t913377\t42\n") == 913377
    assert outer_pid("Name:\tpython\nNSpid:\t42\n") == 42
    assert outer_pid("Name:\tpython\n") > 0  # no NSpid line: os.getpid()


def test_uuids_are_read_from_any_of_their_spellings():
    plain = "5d1fe7bd-f1f4-8a6a-e9d9-b83a4b9ab0d1"
    for spelling in (plain, f"GPU-{plain}", f"MIG-{plain.upper()}", f"UUID('{plain}')"):
        assert uuid_text(spelling) == plain
    assert uuid_text(None) is None and uuid_text("GPU-not-a-uuid") is None


def test_a_sampler_starts_once(fake_nvml):
    sampler, _ = started(fake_nvml())
    with pytest.raises(RuntimeError, match="already started"):
        sampler.start()
    sampler.stop()


def test_the_monitor_shares_the_samplers_nvml_session(fake_nvml):
    fake = fake_nvml()
    sampler, _ = started(fake, uuid="bbbb-1111")
    monitor = MemoryMonitor(MonitorConfig(source="nvml"), device="cuda:0", nvml=sampler.owner)
    reading = monitor.read()
    assert reading.source == "nvml" and reading.used_bytes == 31 * GiB
    assert reading.pressure == pytest.approx(31 / 80)
    monitor.close()  # a shared session is not the monitor's to shut down
    assert fake.calls == {"nvmlInit": 1, "nvmlShutdown": 0}
    sampler.stop()
    assert fake.calls == {"nvmlInit": 1, "nvmlShutdown": 1}


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_sampler_on_a_real_gpu():
    device = torch.device("cuda")
    sampler = NvmlSampler(NvmlConfig(interval_s=0.5, process_interval_s=0.5), device)
    status = sampler.start()
    assert status.available, status.reason
    assert status.identity["matched_by"] == "uuid", status.identity
    time.sleep(1.2)
    before = sampler.rows()[-1]
    block = torch.ones(2 * GiB, dtype=torch.uint8, device=device)  # 2 GiB, touched
    torch.cuda.synchronize()
    reserved = torch.cuda.memory_reserved(device)
    time.sleep(1.2)
    final = sampler.stop()
    after = sampler.rows()[-1]
    assert len(sampler.rows()) >= 4 and all(r["lost"] == 0 for r in sampler.rows())
    # NVML sees the 2 GiB the allocator took (independent sources; 64 MiB slack for others)
    assert after["used_bytes"] - before["used_bytes"] >= 2 * GiB - 64 * 2**20
    assert after["torch_allocated_bytes"] >= block.numel()
    # the remainder is a CUDA context and libraries: positive and well under 4 GiB
    assert 0 < after["non_torch_bytes"] < 4 * GiB, after
    if final.metrics["process_bytes"] == "sampled":
        assert after["process_bytes"] >= reserved  # this process's own figure, from NVML
        assert after["process_bytes"] <= after["used_bytes"]
    else:
        assert final.metrics["process_bytes"].startswith("unavailable: ")
    if after["power_w"] is not None:
        assert 10.0 <= after["power_w"] <= 1500.0  # watts, not milliwatts


@pytest.mark.gpu
@needs_cuda
def test_nvml_identity_is_the_cuda_devices_uuid():
    """NVML's handle has the CUDA device's UUID, also with CUDA_VISIBLE_DEVICES naming
    another GPU (then CUDA's device 0 is not NVML's GPU 0)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, torch; from profiler.collect.nvml import NvmlDevice; "
            "d = NvmlDevice(torch.device('cuda:0')); d.open(); "
            "u = str(torch.cuda.get_device_properties(0).uuid); "
            "print(json.dumps({'cuda': u, 'nvml': d.identity['uuid'], 'index': d.index})); "
            "d.close()")
    runs = [None] + ([str(torch.cuda.device_count() - 1)] if torch.cuda.device_count() > 1
                     else [])
    for visible in runs:
        env = dict(os.environ)
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert uuid_text(got["cuda"]) is not None, got
        assert uuid_text(got["nvml"]) == uuid_text(got["cuda"]), got
        if visible is not None:
            assert got["index"] == int(visible), got
