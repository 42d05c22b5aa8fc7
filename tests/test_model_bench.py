"""Benchmark functions on tiny sizes: they run and report consistent figures (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from energy_flow.bench import bench_flow_init, bench_gru_floor, bench_quantize, bench_train


def test_bench_train_and_floor(tiny):
    r = bench_train(tiny, "cpu", steps=2, warmup=1)
    assert r["preset"] == "debug" and r["steps"] == 2
    assert r["median_ms"] > 0 and r["steps_per_s"] == 1e3 / r["median_ms"]
    assert r["flow_steps"] >= tiny.initial_flows
    assert r["ratio_to_floor"] == r["median_ms"] / r["floor_median_ms"]
    floor = bench_gru_floor(tiny, "cpu", repeats=2)
    assert floor["flow_steps"] == tiny.initial_flows * tiny.steps_limit
    assert floor["median_ms"] == min(floor["step_median_ms"], floor["sequence_median_ms"])


def test_bench_flow_init_and_quantize(tiny):
    for method in ("batched", "loop"):
        r = bench_flow_init(36, method, "cpu", repeats=2)
        assert r["n_flows"] == 36 and r["method"] == method and r["repeats"] == 2
    r = bench_flow_init(20_000, "batched", "cpu", repeats=1)
    assert r["n_flows"] == 20_000
    for method in ("arithmetic", "broadcast", "loop"):
        r = bench_quantize(tiny, method, "cpu", repeats=2)
        assert r["n_positions"] == 32 and r["grid_points"] == 16 * 5
        assert r["distance_bytes"] == (32 * 80 * 12 if method == "broadcast" else 0)


@pytest.mark.slow
def test_bench_cli_json(tiny_sets):
    cmd = [sys.executable, "-m", "energy_flow", "bench", "--json", "--repeats", "1",
           "--flows", "100", "--steps", "1", "--warmup", "0", "--quantize-preset", "debug",
           *tiny_sets]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["preset"] for r in out["train"]] == ["debug", "experiment"]
    assert [r["method"] for r in out["flow_init"]] == ["batched", "loop"]
    assert [r["method"] for r in out["quantize"]] == ["arithmetic", "broadcast", "loop"]
    assert all(r["n_positions"] == 32 for r in out["quantize"])
