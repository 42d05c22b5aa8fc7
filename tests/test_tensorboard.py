"""A real TensorBoard server on a fresh run directory: profiler plugin views and scalar tags."""

from __future__ import annotations

import pytest
import torch
from tb_helpers import TENSORBOARD, get_json, poll, tensorboard

from profiler.collect.nvml import NvmlConfig
from profiler.collect.session import ProfileOptions
from profiler.collect.tracing import TraceSchedule
from profiler.collect.workload import make_energy_flow_workload
from profiler.profiling import run_profile

pytestmark = pytest.mark.slow  # subprocesses / servers: end-to-end


@pytest.fixture(scope="module")
def logdir(tmp_path_factory, tiny_overrides, tiny_config):
    root = tmp_path_factory.mktemp("tb")
    options = ProfileOptions(
        run_dir=root / "tiny", name="tiny", preset="debug", variant="after", pool="off",
        mode="full", steps=6, warmup=1, monitor_interval=3, overrides=tiny_overrides,
        nvml=NvmlConfig(), trace=TraceSchedule(wait=1, warmup=1, active=2))
    meta = run_profile(options, tiny_config, torch.device("cpu"),
                       make_energy_flow_workload, log=None)
    assert meta["status"] == "complete"
    return root, meta


@pytest.mark.skipif(not TENSORBOARD.exists(), reason="no tensorboard executable in this env")
def test_tensorboard_lists_the_trace_memory_view_and_scalars(logdir):
    logdir, meta = logdir
    with tensorboard(logdir) as base:
        runs = poll(lambda: (lambda d: d if "tiny" in d["runs"] and not d["loading"] else None)(
            get_json(base, "/data/plugin/pytorch_profiler/runs")))
        assert runs["runs"] == ["tiny"]
        views = get_json(base, "/data/plugin/pytorch_profiler/views", run="tiny")
        assert "Memory" in views and "Overview" in views
        workers = get_json(base, "/data/plugin/pytorch_profiler/workers", run="tiny",
                           view="Memory")
        assert workers == ["rank0"]
        spans = get_json(base, "/data/plugin/pytorch_profiler/spans", run="tiny", worker="rank0")
        curve = get_json(base, "/data/plugin/pytorch_profiler/memory_curve", run="tiny",
                         worker="rank0", span=spans[0])
        assert curve["rows"]  # the plugin reads the trace's memory events
        tags = poll(lambda: get_json(base, "/data/plugin/scalars/tags").get("tiny"))
        for tag in ("time/wall_ms", "time/forward_ms", "throughput/samples_per_s",
                    "train/loss", "memory/rss_bytes", "memory_region/carrier/peak_bytes",
                    "memory_role/gradient/peak_bytes", "memory/allocations",
                    "memory/process_heap_bytes", "summary/samples_per_s"):
            assert tag in tags, sorted(tags)
        assert "memory/reserved_bytes" not in tags  # CPU: no caching-allocator reserve
        # the run's figures are run.json's, from the one definition of measured steps
        points = get_json(base, "/data/plugin/scalars/scalars", run="tiny",
                          tag="summary/samples_per_s")
        assert points[-1][2] == pytest.approx(meta["timings"]["samples_per_s"], rel=1e-6)
