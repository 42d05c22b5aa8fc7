"""The multi-rank analyzers and the whole-run status, on real step tables."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import numpy as np
import pandas as pd
import pytest

from profiler.analyze import ranks
from profiler.collect.distributed import CommTimer, combine, finish_root_record
from profiler.collect.writer import RunLock
from profiler.parse.trace import TraceFrames
from profiler.rundir import RUN_JSON, lock_path


def steps(rank: int, compute: list[float], comm: list[float], exposed: list[float],
          flows: int = 100) -> pd.DataFrame:
    n = len(compute)
    wall = [c + e for c, e in zip(compute, exposed, strict=True)]
    return pd.DataFrame({
        "step": range(n), "phase": ["warmup"] + ["measured"] * (n - 1), "wall_ms": wall,
        "forward_ms": np.nan, "backward_ms": np.nan, "optimizer_ms": np.nan, "loss": 1.0,
        "skipped": 0, "samples": 4, "allocated_bytes": 10, "reserved_bytes": 10,
        "peak_bytes": 1000 * (rank + 1), "rss_bytes": 5000, "traced": 0, "rank": rank,
        "comm_ms": comm, "comm_exposed_ms": exposed, "flow_steps": flows})


def test_a_slow_rank_is_the_straggler_and_its_peer_waits():
    fast = steps(0, [50, 50, 50, 50, 50], [30, 32, 30, 31, 30], [25, 26, 25, 25, 25])
    slow = steps(1, [70, 75, 75, 75, 75], [8, 6, 5, 5, 5], [3, 1, 0, 0, 0], flows=160)
    table = ranks.rank_table({0: fast, 1: slow})
    assert list(table["rank"]) == [0, 1]
    assert table.loc[0, "compute_ms"] == 50 and table.loc[1, "compute_ms"] == 75
    assert table.loc[0, "step_ms"] == 75 and table.loc[1, "step_ms"] == 75
    # rank 0, measured steps: 123 ms of all-reduce in 301 ms of steps, 101 of them exposed
    assert table.loc[0, "comm_share_pct"] == pytest.approx(100 * 123 / 301)
    assert table.loc[0, "overlap_pct"] == pytest.approx(100 * (1 - 101 / 123))
    assert table.loc[1, "flow_steps"] == 160 and table.loc[1, "peak_bytes"] == 2000
    verdict = ranks.straggler(table)
    assert verdict["verdict"] == "straggler" and verdict["slowest_rank"] == 1
    assert verdict["ratio"] == pytest.approx(75 / 62.5)
    per = ranks.per_step({0: fast, 1: slow})
    assert list(per["step"]) == [1, 2, 3, 4]
    assert per["straggler_ratio"].iloc[0] == pytest.approx(75 / 62.5)
    assert per["comm_share"].iloc[0] == pytest.approx((32 + 6) / (76 + 76))


def test_balanced_ranks_and_one_rank_have_no_straggler():
    a = steps(0, [50, 50, 51, 50], [5, 5, 5, 5], [1, 1, 1, 1])
    b = steps(1, [52, 51, 50, 52], [5, 5, 5, 5], [1, 1, 1, 1])
    assert ranks.straggler(ranks.rank_table({0: a, 1: b}))["verdict"] == "balanced"
    assert ranks.straggler(ranks.rank_table({0: a}))["verdict"] == "n/a"


def test_weak_scaling_efficiency():
    one = ranks.rank_table({0: steps(0, [50] * 4, [0] * 4, [0] * 4)})
    two = ranks.rank_table({0: steps(0, [50] * 4, [20] * 4, [12.5] * 4),
                            1: steps(1, [50] * 4, [20] * 4, [12.5] * 4)})
    sc = ranks.scaling(one, two)
    # 4 samples / 50 ms on one rank; 2 x 4 samples / 62.5 ms on two
    assert sc["speedup"] == pytest.approx((8 / 0.0625) / (4 / 0.05))
    assert sc["efficiency"] == pytest.approx(0.8)
    assert ranks.scaling(two, two) is None


def test_top_collectives_sum_over_ranks():
    ops = pd.DataFrame({"name": ["gloo:all_reduce", "aten::mm", "gloo:broadcast"],
                        "count": [3, 10, 1], "self_us": [0, 0, 0],
                        "total_us": [3000.0, 500.0, 100.0], "self_device_us": [0, 0, 0],
                        "total_device_us": [0.0, 0.0, 0.0]})
    top = ranks.top_collectives({0: ops, 1: ops})
    assert list(top["name"]) == ["gloo:all_reduce", "gloo:broadcast"]
    assert top.loc[0, "calls"] == 6 and top.loc[0, "total_ms"] == pytest.approx(6.0)
    assert top.loc[0, "ranks"] == 2


def test_the_run_names_the_lost_rank_not_the_peer_that_failed_through_it():
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = os.uname().nodename
    records = {
        0: {"rank": 0, "host": host, "pid": os.getpid(), "status": "failed",
            "error": {"type": "DistBackendError", "message": "Connection closed by peer"}},
        1: {"rank": 1, "host": host, "pid": dead.pid, "status": "running", "error": None},
    }
    out = combine(2, records, host=host)
    assert out["status"] == "failed" and out["error"]["rank"] == 1
    assert out["failed_ranks"] == [1] and out["ranks"][1]["error"]["type"] == "RankLost"
    assert "also not complete: rank 0" in out["error"]["message"]
    # every rank complete -> complete; an interrupted rank -> interrupted; a rank with no
    # record (another node) is listed as missing
    done = {r: {"rank": r, "status": "complete"} for r in (0, 1)}
    assert combine(2, done)["status"] == "complete"
    stop = {**done, 1: {"rank": 1, "status": "interrupted", "error": None}}
    assert combine(2, stop)["status"] == "interrupted"
    assert combine(3, done)["missing_ranks"] == [2]
    # a rank that failed on its own (not a peer error) is the culprit
    own = {0: {"rank": 0, "status": "failed", "error": {"type": "RuntimeError",
                                                          "message": "boom"}},
           1: {"rank": 1, "status": "failed", "error": {"type": "DistBackendError",
                                                          "message": "peer"}}}
    assert combine(2, own)["error"]["rank"] == 0
    # a rank still running (alive) when its peer's collective timed out: it hung
    hung = {0: {"rank": 0, "host": host, "pid": os.getpid(), "status": "failed",
                "error": {"type": "DistBackendError", "message": "Timed out waiting"}},
            1: {"rank": 1, "host": host, "pid": os.getpid(), "status": "running"}}
    out = combine(2, hung, host=host)
    assert out["status"] == "failed" and out["failed_ranks"] == [1]
    assert out["error"]["type"] == "RankNotResponding"
    assert out["error"]["message"].startswith("rank 1 did not respond")


def test_comm_timer_unions_overlapping_buckets():
    timer = CommTimer()
    timer._spans = [(0.000, 0.010, 100), (0.005, 0.020, 50), (0.030, 0.035, 10)]
    got = timer.take()
    assert got["comm_ms"] == pytest.approx(25.0) and got["comm_calls"] == 3
    assert got["comm_exposed_ms"] == pytest.approx(5.0) and got["comm_bytes"] == 160
    assert timer.take()["comm_calls"] == 0


def _frames(ops: list[tuple[str, float, float]], notes: list[tuple[str, float, float]]):
    def spans(rows):
        f = pd.DataFrame(rows, columns=["name", "ts_us", "dur_us"])
        f["end_us"] = f["ts_us"] + f["dur_us"]
        return f

    return TraceFrames(spans(ops), spans(notes), pd.DataFrame(), {})


def test_trace_overlap_is_the_collective_time_during_backward_nodes():
    node = "autograd::engine::evaluate_function: MmBackward0"
    frames = _frames(
        # backward nodes 0-10 and 12-20 (nested 2-4 inside the first), launch op ignored
        [(node, 0.0, 10.0), (node, 2.0, 2.0), (node, 12.0, 8.0), ("c10d::allreduce_", 5.0, 0.5)],
        # two collectives on the backend's thread: 5-15 (8 of 10 overlapped), 18-28 (2 of 10)
        [("ProfilerStep#3", 0.0, 30.0), ("gloo:all_reduce", 5.0, 10.0),
         ("gloo:all_reduce", 18.0, 10.0)])
    got = ranks.collective_overlap([frames])
    assert got == {"steps": 1, "calls": 2, "comm_ms_per_step": 20.0 / 1e3,
                   "overlap_pct": pytest.approx(50.0)}
    # two trace files: summed, per step over both
    both = ranks.collective_overlap([frames, frames])
    assert both["steps"] == 2 and both["calls"] == 4
    assert both["comm_ms_per_step"] == pytest.approx(0.02)
    assert both["overlap_pct"] == pytest.approx(50.0)
    # no collective: None; no backward node: 0% overlap
    assert ranks.collective_overlap([_frames([(node, 0.0, 1.0)], [])]) is None
    alone = ranks.collective_overlap([_frames([], [("nccl:all_reduce", 0.0, 4.0)])])
    assert alone["overlap_pct"] == 0.0 and alone["steps"] == 0
    assert alone["comm_ms_per_step"] is None


def test_covered_length_matches_a_plain_sweep():
    rng = np.random.default_rng(3)
    starts = rng.uniform(0, 100, 40)
    ends = starts + rng.uniform(0, 10, 40)
    a = rng.uniform(-5, 105, 200)
    b = a + rng.uniform(0, 20, 200)
    grid = np.linspace(-10, 130, 140001)  # plain reference on a fine grid
    inside = ((grid[:, None] >= starts) & (grid[:, None] <= ends)).any(axis=1)
    step = grid[1] - grid[0]
    want = [inside[(grid >= x) & (grid < y)].sum() * step for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(ranks._covered(starts, ends, a, b), want, atol=0.05)


def _record(path, rank, status, pid, error=None, **extra):
    path.mkdir(parents=True, exist_ok=True)
    meta = {"name": "r", "status": status, "error": error, "steps_completed": 5,
            "distributed": {"rank": rank, "host": socket.gethostname(), "pid": pid,
                            "device": "cpu", "world_size": 2, **extra}}
    (path / RUN_JSON).write_text(json.dumps(meta))
    return meta


def test_a_rank_that_ends_after_rank_0_gave_up_completes_the_record(tmp_path):
    root = tmp_path / "r"
    stopped = {"type": "StopRequested", "message": "stopped by SIGINT"}
    # rank 0 waited, gave up and combined with rank 1 still running
    _record(root, 0, "interrupted", os.getpid(), ranks=[
        {"rank": 0, "status": "interrupted", "error": stopped, "pid": os.getpid(),
         "host": socket.gethostname()},
        {"rank": 1, "status": "running", "pid": os.getpid(), "host": socket.gethostname(),
         "error": {"type": "RankNotResponding", "message": "rank 1 was still running"}}])
    _record(root / "ranks" / "rank1", 1, "interrupted", os.getpid(), error=stopped)
    combined = finish_root_record(root, 2, rank=1)
    assert combined is not None and combined["status"] == "interrupted"
    meta = json.loads((root / RUN_JSON).read_text())
    assert [r["status"] for r in meta["distributed"]["ranks"]] == ["interrupted", "interrupted"]
    assert meta["distributed"]["finished_by_rank"] == 1
    # once the record shows this rank's end there is nothing more to do
    assert finish_root_record(root, 2, rank=1) is None


def test_a_rank_finishes_the_record_of_a_lost_rank_0_and_leaves_a_live_one_alone(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    root = tmp_path / "r"
    _record(root, 0, "running", dead.pid)
    _record(root / "ranks" / "rank1", 1, "interrupted", os.getpid(),
            error={"type": "StopRequested", "message": "stopped by SIGTERM"})
    lock = RunLock(root)
    lock.acquire()  # rank 0 alive: it owns the record
    assert finish_root_record(root, 2, rank=1) is None
    lock.release()
    lock_path(root).touch()  # a dead process's lock: the file stays, the kernel freed it
    combined = finish_root_record(root, 2, rank=1)
    assert combined["status"] == "failed" and combined["error"]["rank"] == 0
    meta = json.loads((root / RUN_JSON).read_text())
    assert meta["status"] == "failed" and meta["distributed"]["failed_ranks"] == [0]
    assert meta["distributed"]["ranks"][0]["error"]["type"] == "RankLost"
