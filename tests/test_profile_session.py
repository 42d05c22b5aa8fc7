"""ProfileSession in-process: determinism, failure statuses, pools, overhead pairing."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
import torch

from profiler.analyze.timings import paired_overhead
from profiler.collect.nvml import NvmlConfig
from profiler.collect.session import ProfileOptions, ProfileSession
from profiler.collect.tracing import TraceSchedule
from profiler.collect.workload import EnergyFlowWorkload, make_energy_flow_workload
from profiler.collect.writer import RunWriter
from profiler.profiling import postprocess
from profiler.rundir import RUN_JSON, RUN_JSON_KEYS

CPU = torch.device("cpu")


@pytest.fixture
def session(tiny_overrides, tiny_config):
    """``session(tmp_path, name, mode, ...)``: a ProfileSession of the tiny config."""

    def build(tmp_path, name, mode, steps=5, pool="off", factory=make_energy_flow_workload,
              device=CPU):
        options = ProfileOptions(
            run_dir=tmp_path / name, name=name, preset="debug", variant="after", pool=pool,
            mode=mode, steps=steps, warmup=1, monitor_interval=2, overrides=tiny_overrides,
            nvml=NvmlConfig(), trace=TraceSchedule(wait=1, warmup=1, active=2))
        return ProfileSession(options, tiny_config, device, factory, log=io.StringIO())

    return build


def finish(s: ProfileSession) -> dict:
    """Collect, then post-process (what ``profiler.profiling.run_profile`` does)."""
    s.run()
    return postprocess(s)


def test_same_seed_same_losses_with_and_without_profiling(tmp_path, session):
    losses = {}
    for mode in ("bare", "light", "full"):
        meta = finish(session(tmp_path, mode, mode))
        assert meta["status"] == "complete"
        losses[mode] = pd.read_csv(tmp_path / mode / "steps.csv")["loss"].tolist()
    assert len(losses["bare"]) == 5 and len(set(losses["bare"])) > 1
    assert losses["light"] == losses["bare"]
    assert losses["full"] == losses["bare"]
    bare = pd.read_csv(tmp_path / "bare" / "steps.csv")
    assert bare["forward_ms"].isna().all() and bare["rss_bytes"].isna().all()


class Breaks:
    """The real workload, failing at one step with a given exception."""

    def __init__(self, at: int, exc: BaseException):
        self.at, self.exc = at, exc

    def __call__(self, config, device, pool):
        inner = make_energy_flow_workload(config, device, pool)
        at, exc = self.at, self.exc

        class Failing(EnergyFlowWorkload):
            def __init__(self):
                self.__dict__.update(inner.__dict__)

            def step(self, index, on_phase):
                if index == at:
                    raise exc
                return super().step(index, on_phase)

        return Failing()


def test_a_crash_leaves_failed_with_the_error_and_the_steps_so_far(tmp_path, session):
    meta = finish(session(tmp_path, "crash", "light", factory=Breaks(2, RuntimeError("boom"))))
    assert meta["status"] == "failed"
    assert meta["error"] == {"type": "RuntimeError", "message": "boom"}
    saved = json.loads((tmp_path / "crash" / RUN_JSON).read_text())
    assert saved["status"] == "failed" and saved["steps_completed"] == 2
    assert pd.read_csv(tmp_path / "crash" / "steps.csv")["step"].tolist() == [0, 1]
    assert saved["memory_at_failure"]["rss_bytes"] > 0


def test_out_of_memory_is_its_own_status_with_the_memory_state(tmp_path, session):
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    meta = finish(session(tmp_path, "oom", "full", factory=Breaks(3, oom)))
    assert meta["status"] == "oom" and meta["steps_completed"] == 3
    assert meta["error"]["type"] == "OutOfMemoryError"
    assert meta["memory_at_failure"]["rss_bytes"] > 0
    # the open trace window (step 2 recorded) is still written and attributed
    assert meta["trace"]["files"] and meta["attribution"]["events"] > 0


def test_pool_statistics_are_recorded_per_step(tmp_path, session):
    meta = finish(session(tmp_path, "pool", "light", steps=4, pool="simple"))
    assert meta["status"] == "complete" and meta["config"]["pool"] == "simple"
    rows = pd.read_csv(tmp_path / "pool" / "memory_by_category.csv")
    pool = rows[rows["view"] == "pool"]
    assert set(pool["step"]) == {0, 1, 2, 3}
    last = pool[pool["step"] == 3]
    assert (last["pool_hits"] + last["pool_misses"]).sum() > 0
    assert last["pool_hits"].sum() > pool[pool["step"] == 0]["pool_hits"].sum()


def test_paired_overhead_uses_measured_pairs_only():
    rows = [
        {"step": 0, "phase": "warmup", "wall_ms": 50.0, "instrumented": 0},
        {"step": 1, "phase": "warmup", "wall_ms": 90.0, "instrumented": 1},
        {"step": 2, "phase": "measured", "wall_ms": 100.0, "instrumented": 1},
        {"step": 3, "phase": "measured", "wall_ms": 98.0, "instrumented": 0},
        {"step": 4, "phase": "measured", "wall_ms": 100.0, "instrumented": 0},
        {"step": 5, "phase": "measured", "wall_ms": 101.0, "instrumented": 1},
        {"step": 6, "phase": "measured", "wall_ms": 100.0, "instrumented": 0},
        {"step": 7, "phase": "measured", "wall_ms": 104.0, "instrumented": 1},
    ]
    got = paired_overhead(rows)
    assert got["pairs"] == 3
    assert got["overhead_pct_paired_median"] == pytest.approx(100 * 2.0 / 98.0)
    assert got["bare_ms_median"] == 100.0 and got["light_ms_median"] == 101.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_full_run_on_cuda(tmp_path, session):
    meta = finish(session(tmp_path, "cuda", "full", steps=6, device=torch.device("cuda")))
    assert meta["status"] == "complete", meta["error"]
    assert meta["device"]["type"] == "cuda"
    assert meta["attribution"]["device"] == "cuda:0" and meta["attribution"]["ok"]
    steps = pd.read_csv(tmp_path / "cuda" / "steps.csv")
    assert (steps["allocated_bytes"] > 0).all()
    assert (steps["reserved_bytes"] >= steps["allocated_bytes"]).all()
    assert (steps["peak_bytes"] >= steps["allocated_bytes"]).all()
    alloc = pd.read_csv(tmp_path / "cuda" / "allocations.csv")
    assert (alloc["device"] == "cuda:0").any()
    assert (tmp_path / "cuda" / "cuda_memory_snapshot.pickle").stat().st_size > 0
    if meta["nvml"]["available"]:
        nvml = pd.read_csv(tmp_path / "cuda" / "nvml.csv")
        assert len(nvml) >= 1 and (nvml["lost"] == 0).all()
        # independent readings: NVML's used memory holds the allocator's reserved bytes and
        # a CUDA context (positive, under 4 GiB for this one process on the device)
        reserved = nvml["torch_allocated_bytes"] + nvml["torch_cache_bytes"]
        assert (nvml["used_bytes"] >= reserved).all()
        assert ((nvml["non_torch_bytes"] > 0) & (nvml["non_torch_bytes"] < 4 * 2**30)).all()
        assert meta["nvml"]["metrics"]["used_bytes"] == "sampled"


def test_the_writer_refuses_run_json_keys_outside_the_contract(tmp_path):
    writer = RunWriter(tmp_path / "w")
    writer.update(status="running", memory_history={"recorded": False})  # contract keys
    with pytest.raises(KeyError, match="throughput_guess"):
        writer.update(throughput_guess=3)
    assert "throughput_guess" not in writer.meta
    assert set(writer.meta) == set(RUN_JSON_KEYS) | {"memory_history"}
