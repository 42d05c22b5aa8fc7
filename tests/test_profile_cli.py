"""``python -m profiler profile`` through a real subprocess: files, bad options, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from profiler.cli import main
from profiler.rundir import (
    ALLOCATION_COLUMNS,
    MEMORY_COLUMNS,
    OPERATOR_COLUMNS,
    RUN_JSON,
    RUN_JSON_KEYS,
    STEPS_COLUMNS,
    trace_files,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def profile_cmd(tiny_sets):
    """``profile_cmd(out, name, *extra)``: the profile command line on the tiny config."""

    def build(out: Path, name: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "profiler", "profile", "--out", str(out), "--name", name,
                "--device", "cpu", *tiny_sets, *extra]

    return build


def run(cmd, timeout=120):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.mark.slow
def test_full_run_writes_the_whole_run_directory(tmp_path, profile_cmd):
    proc = run(profile_cmd(tmp_path, "full", "--steps", "8", "--warmup", "2", "--mode", "full"))
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "full"
    out = proc.stdout.splitlines()
    assert out[0] == str(run_dir)
    assert out[1].startswith("run: complete  8/8 steps")
    meta = json.loads((run_dir / RUN_JSON).read_text())
    assert set(RUN_JSON_KEYS) <= set(meta)
    assert meta["status"] == "complete" and meta["error"] is None
    assert meta["steps_completed"] == 8 and meta["warmup_steps"] == 2
    assert meta["config"]["model"]["lattice_width"] == 4 and meta["config"]["variant"] == "after"
    assert meta["config"]["overrides"]["carrier_hidden"] == 16
    assert meta["versions"]["torch"] and meta["device"]["type"] == "cpu"
    assert meta["attribution"]["ok"] and meta["attribution"]["events"] > 100
    steps = pd.read_csv(run_dir / "steps.csv")
    assert list(steps.columns[: len(STEPS_COLUMNS)]) == list(STEPS_COLUMNS)
    assert steps["phase"].tolist() == ["warmup"] * 2 + ["measured"] * 6
    assert steps["traced"].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]  # profiler warm-up + active
    parts = steps["forward_ms"] + steps["backward_ms"] + steps["optimizer_ms"]
    assert ((parts <= steps["wall_ms"] + 1e-6) & (parts > 0.5 * steps["wall_ms"])).all()
    assert (steps["flows_created"] >= 32).all()
    # process figures are sampled on the first step and the heartbeat steps (here the last)
    sampled = steps["step"].isin([0, 7])
    assert (steps.loc[sampled, "rss_bytes"] > 0).all()
    assert steps.loc[~sampled, ["rss_bytes", "heap_bytes"]].isna().all().all()
    # tensor memory from the counting allocator: the model's tensors, well below the heap
    assert meta["device"]["allocator_stats"] == "tensor counter (counting CPU allocator)"
    assert (steps["allocated_bytes"] > 0).all() and (steps["alloc_count"] > 0).all()
    assert (steps["peak_bytes"] >= steps["allocated_bytes"]).all()
    assert (steps.loc[sampled, "allocated_bytes"] < steps.loc[sampled, "heap_bytes"]).all()
    assert steps["reserved_bytes"].isna().all()  # no caching-allocator reserve on CPU
    alloc = pd.read_csv(run_dir / "allocations.csv")
    assert list(alloc.columns) == [*ALLOCATION_COLUMNS, "owner_region"]
    assert set(alloc["step"]) == {3, 4, 5}  # trace wait 2 + warmup 1, active 3
    by_cat = pd.read_csv(run_dir / "memory_by_category.csv")
    assert list(by_cat.columns) == list(MEMORY_COLUMNS)
    assert {"region", "role"} == set(by_cat["view"])
    ops = pd.read_csv(run_dir / "operators.csv")
    assert list(ops.columns) == list(OPERATOR_COLUMNS)
    assert ops["name"].str.startswith("aten::").sum() > 10
    assert not ops["name"].str.startswith("ProfilerStep").any()
    assert (ops["total_us"] >= ops["self_us"] - 1e-6).all()
    assert len(trace_files(run_dir)) == 1
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert not (run_dir / "nvml.csv").exists()
    assert meta["nvml"]["available"] is False
    # a CPU run never samples the GPUs, even on a host that has some
    assert meta["nvml"]["reason"] == "NVML unavailable: not sampled on a cpu run"


BAD_OPTIONS = [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--steps", "0"], "--steps must be > 0"),
    (["--mode", "medium"], "unknown mode 'medium'"),
    (["--variant", "sideways"], "unknown variant 'sideways'"),
    (["--pool", "deep"], "unknown pool 'deep'"),
    (["--set", "no_such_field=1"], "unknown config field 'no_such_field'"),
    (["--set", "batch_size=-3"], "batch_size must be a positive integer"),
    (["--nvml-interval", "0.1"], "nvml interval must be >= 0.5"),
    (["--steps", "3", "--trace-wait", "2", "--trace-warmup", "1"], "ends before the trace window"),
    (["--steps", "3", "--warmup", "3"], "--warmup must be in [0, steps) = [0, 3), got 3"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "cuda"),
    (["--steps", "two"], "invalid int value"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS)
def test_bad_options_give_one_line_and_write_nothing(tmp_path, capsys, args, message, profile_cmd):
    try:
        code = main(profile_cmd(tmp_path / "out", "bad", *args)[3:])
    except SystemExit as exc:  # argparse-level errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bad_option_in_a_subprocess(tmp_path, profile_cmd):
    proc = run(profile_cmd(tmp_path / "out", "bad", "--steps", "-5"))
    assert proc.returncode == 2
    assert proc.stderr == "error: --steps must be > 0, got -5\n" and proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_existing_run_and_unwritable_output(tmp_path, capsys, profile_cmd):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    argv = profile_cmd(tmp_path, "taken", "--steps", "2", "--mode", "light")[3:]
    assert main(argv) == 2
    assert "already exists (use --overwrite)" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(profile_cmd(blocker / "runs", "x", "--steps", "2", "--mode", "light")[3:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not writable" in err[0]


def _wait_for(proc, needle: str, limit_s: float = 60.0) -> str:
    seen = ""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if needle in line:
            return seen
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"never saw {needle!r}; stderr:\n{seen}")


@pytest.mark.slow
@pytest.mark.parametrize("mode, sig", [("light", signal.SIGINT), ("full", signal.SIGTERM)])
def test_signal_mid_run_leaves_an_interrupted_valid_run(tmp_path, mode, sig, profile_cmd):
    cmd = profile_cmd(tmp_path, "stop", "--steps", "100000", "--warmup", "1", "--mode", mode,
                      "--monitor-interval", "1", "--trace-wait", "1", "--trace-warmup", "1",
                      "--trace-active", "100000")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for(proc, "step 6/")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    run_dir = tmp_path / "stop"
    meta = json.loads((run_dir / RUN_JSON).read_text())
    assert meta["status"] == "interrupted"
    assert meta["error"]["message"] == f"stopped by {sig.name}"
    steps = pd.read_csv(run_dir / "steps.csv")
    assert 6 <= len(steps) == meta["steps_completed"] < 100000
    assert steps["step"].tolist() == list(range(len(steps)))
    assert stdout.splitlines()[1].startswith("run: interrupted")
    if mode == "full":  # the open trace window is saved with what it recorded
        assert len(trace_files(run_dir)) == 1
        alloc = pd.read_csv(run_dir / "allocations.csv")
        assert set(alloc["step"]) <= set(range(2, len(steps) + 1)) and len(alloc) > 0
        assert meta["attribution"]["ok"]
