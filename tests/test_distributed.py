"""Multi-rank profiling on the real engine: torchrun subprocesses, gloo on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from profiler.collect.distributed import _alive
from profiler.rundir import RUN_JSON

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# The tiny config of these tests (seconds per run on 2 cores).
TINY_SETS = [a for kv in ("lattice_width=4", "lattice_height=4", "batch_size=2",
                          "carrier_hidden=16", "mapper_hidden=32", "embedding_dim=32")
             for a in ("--set", kv)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PROFILER_COLLECTIVE_TIMEOUT": "60"}


def profile_args(out: Path, name: str, *extra: str) -> list[str]:
    return ["-m", "profiler", "profile", "--out", str(out), "--name", name, *TINY_SETS, *extra]


def standalone(nproc: int, args: list[str]) -> list[str]:
    return [*TORCHRUN, "--standalone", "--nproc-per-node", str(nproc), *args]


def meta_of(path: Path) -> dict:
    return json.loads((path / RUN_JSON).read_text())


def traces(run: Path) -> dict[int, dict]:
    out = {}
    for f in sorted(run.glob("rank*.pt.trace.json.gz")):
        info = json.loads(gzip.decompress(f.read_bytes()))["distributedInfo"]
        out[info["rank"]] = {"file": f.name, **info}
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        standalone(2, profile_args(out, "two", "--steps", "8", "--warmup", "2",
                                   "--trace-wait", "1", "--trace-warmup", "1",
                                   "--trace-active", "2")),
        env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "two"


def test_two_ranks_make_one_complete_run(two_ranks):
    meta = meta_of(two_ranks)
    d = meta["distributed"]
    assert meta["status"] == "complete" and meta["error"] is None
    assert (d["world_size"], d["backend"], d["launcher"]) == (2, "gloo", "torchrun")
    assert [(r["rank"], r["status"], r["steps_completed"]) for r in d["ranks"]] == \
        [(0, "complete", 8), (1, "complete", 8)]
    assert d["timeout_s"] == 60.0
    rank1 = json.loads((two_ranks / "ranks" / "rank1" / RUN_JSON).read_text())
    assert rank1["status"] == "complete" and rank1["distributed"]["rank"] == 1
    assert rank1["distributed"]["pid"] != d["pid"]
    # each rank's rows, with its rank, and DDP's gradient all-reduce timed on every step
    for r, path in ((0, two_ranks / "steps.csv"), (1, two_ranks / "ranks/rank1/steps.csv")):
        steps = pd.read_csv(path)
        assert list(steps["rank"].unique()) == [r] and len(steps) == 8
        assert (steps["comm_calls"] >= 1).all() and (steps["comm_ms"] > 0).all()
        assert (steps["comm_exposed_ms"] <= steps["comm_ms"] + 1e-9).all()
        assert (steps["comm_bytes"] > 0).all()
    # one trace per rank, distinct ranks in distributedInfo, one span name for both
    found = traces(two_ranks)
    assert sorted(found) == [0, 1]
    assert all(t["world_size"] == 2 and t["backend"] == "gloo" for t in found.values())
    assert found[0]["file"].split(".")[1] == found[1]["file"].split(".")[1]
    assert found[0]["file"].startswith("rank0.") and found[1]["file"].startswith("rank1.")
    # rank 0's trace window files in its directory, rank 1's in its own
    assert (two_ranks / "operators.csv").is_file()
    assert (two_ranks / "ranks/rank1/operators.csv").is_file()
    assert meta["trace"]["files"] == [found[0]["file"]]
    assert rank1["trace"]["files"] == [found[1]["file"]]


def _start(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(args, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kw)


def _wait_for_rank_steps(run: Path, limit_s: float = 120.0) -> dict[int, int]:
    """The pids of both ranks once both are past their setup (run.jsonc with trace key)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        pids = {}
        for r, path in ((0, run / RUN_JSON), (1, run / "ranks/rank1" / RUN_JSON)):
            try:
                m = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if m["status"] == "running" and m["timings"].get("setup_s") is not None:
                pids[r] = m["distributed"]["pid"]
        if len(pids) == 2:
            return pids
        time.sleep(0.3)
    raise AssertionError(f"the ranks of {run} did not start in {limit_s} s")


def _finish(proc: subprocess.Popen, limit_s: float = 120.0) -> str:
    try:
        out, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun did not end: {out[-3000:]}") from None
    return out


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_naming_it(tmp_path):
    proc = _start(standalone(2, profile_args(tmp_path, "kill", "--mode", "light",
                                             "--steps", "100000")))
    run = tmp_path / "kill"
    pids = _wait_for_rank_steps(run)
    time.sleep(2.0)  # a few steps
    os.kill(pids[1], signal.SIGKILL)
    out = _finish(proc)
    assert proc.returncode != 0
    meta = meta_of(run)
    assert meta["status"] == "failed", out[-3000:]
    assert meta["error"]["rank"] == 1 and meta["error"]["message"].startswith("rank 1 ")
    assert meta["distributed"]["failed_ranks"] == [1]
    ranks = {r["rank"]: r for r in meta["distributed"]["ranks"]}
    assert ranks[1]["error"]["type"] == "RankLost"
    assert ranks[0]["status"] in ("failed", "interrupted")
    steps = pd.read_csv(run / "steps.csv")  # rank 0's data kept
    assert len(steps) >= 1 and (steps["rank"] == 0).all()
    assert not _alive(pids[0]) and not _alive(pids[1])  # no process left behind


@pytest.mark.slow
def test_sigint_to_torchrun_interrupts_every_rank(tmp_path):
    proc = _start(standalone(2, profile_args(tmp_path, "stop", "--mode", "light",
                                             "--steps", "100000")))
    run = tmp_path / "stop"
    pids = _wait_for_rank_steps(run)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)  # torchrun alone, as Ctrl-C reaches it
    out = _finish(proc)
    meta = meta_of(run)
    assert meta["status"] == "interrupted", out[-3000:]
    statuses = [r["status"] for r in meta["distributed"]["ranks"]]
    assert statuses == ["interrupted", "interrupted"], meta["distributed"]["ranks"]
    assert len(pd.read_csv(run / "steps.csv")) >= 1
    assert len(pd.read_csv(run / "ranks/rank1/steps.csv")) >= 1
    assert not _alive(pids[0]) and not _alive(pids[1])
