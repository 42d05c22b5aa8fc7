"""A real TensorBoard server on a fresh run directory: profiler plugin views and scalar tags."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

from profiler.collect.nvml import NvmlConfig
from profiler.collect.session import ProfileOptions
from profiler.collect.tracing import TraceSchedule
from profiler.collect.workload import make_energy_flow_workload
from profiler.profiling import run_profile

pytestmark = pytest.mark.slow  # subprocesses / servers: end-to-end

TENSORBOARD = Path(sys.executable).parent / "tensorboard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(base: str, path: str, **params):
    query = ("?" + urllib.parse.urlencode(params)) if params else ""
    with urllib.request.urlopen(base + path + query, timeout=10) as resp:
        body = resp.read()
        if resp.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return json.loads(body)


def poll(fn, limit_s: float = 90.0):
    deadline = time.monotonic() + limit_s
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for TensorBoard ({last})")


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
    port = free_port()
    proc = subprocess.Popen(
        [str(TENSORBOARD), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port),
         "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
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
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
