"""NVML: parsing and reconciliation on recorded readings; the unavailable path for real."""

from __future__ import annotations

import time

import pytest
import torch

from profiler.collect.nvml import NvmlConfig, NvmlSampler, reading_row
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
    sampler = NvmlSampler(NvmlConfig(interval_s=0.5), torch.device("cpu"))
    status = sampler.start()
    time.sleep(0.6)
    sampler.stop()
    assert status.available is False
    assert status.reason.startswith("NVML unavailable: ")
    assert len(status.reason) > len("NVML unavailable: ")
    assert sampler.rows() == []
    assert status.to_json(0.5) == {"available": False, "reason": status.reason,
                                   "interval_s": 0.5, "gpus": []}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampler_on_a_real_gpu():
    device = torch.device("cuda")
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    sampler = NvmlSampler(NvmlConfig(interval_s=0.5, process_interval_s=0.5), device)
    status = sampler.start()
    assert status.available, status.reason
    time.sleep(1.3)
    sampler.stop()
    rows = sampler.rows()
    assert len(rows) >= 2 and all(r["lost"] == 0 for r in rows)
    r = rows[-1]
    assert r["used_bytes"] >= torch.cuda.memory_reserved(device) >= block.numel()
    assert r["torch_allocated_bytes"] >= block.numel()
    assert r["torch_allocated_bytes"] + r["torch_cache_bytes"] + r["non_torch_bytes"] == r["used_bytes"]
