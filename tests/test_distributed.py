"""Multi-rank profiling on the real engine: torchrun subprocesses, gloo on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from tb_helpers import TENSORBOARD, free_port, get_json, poll, tensorboard

from profiler.parse.run import load_run
from profiler.rundir import RUN_JSON
from profiler.rundir import pid_alive as _alive

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# The tiny config of these tests (seconds per run on 2 cores).
TINY_SETS = [a for kv in ("lattice_width=4", "lattice_height=4", "batch_size=2",
                          "carrier_hidden=16", "mapper_hidden=32", "embedding_dim=32")
             for a in ("--set", kv)]


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
    # communication read from each rank's trace window: one all-reduce span per traced
    # step at least, and the part of it that ran while backward nodes were computing
    for record in d["ranks"]:
        comm = record["trace_comm"]
        assert comm["steps"] == 2 and comm["calls"] >= 2 and comm["comm_ms_per_step"] > 0
        assert 0.0 <= comm["overlap_pct"] <= 100.0


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
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_fails_the_run_naming_it(tmp_path, victim):
    proc = _start(standalone(2, profile_args(tmp_path, "kill", "--mode", "light",
                                             "--steps", "100000")))
    run = tmp_path / "kill"
    pids = _wait_for_rank_steps(run)
    time.sleep(2.0)  # a few steps
    os.kill(pids[victim], signal.SIGKILL)
    out = _finish(proc)
    assert proc.returncode != 0
    meta = meta_of(run)
    survivor = 1 - victim
    assert meta["status"] == "failed", out[-3000:]
    assert meta["error"]["rank"] == victim
    assert meta["error"]["message"].startswith(f"rank {victim} ")
    assert meta["distributed"]["failed_ranks"] == [victim]
    ranks = {r["rank"]: r for r in meta["distributed"]["ranks"]}
    assert ranks[victim]["error"]["type"] == "RankLost"
    assert ranks[survivor]["status"] in ("failed", "interrupted")
    # rank 0 owns the record; when it is the one lost, the survivor finishes it
    assert meta["distributed"].get("finished_by_rank") == (1 if victim == 0 else None)
    kept = run / "steps.csv" if survivor == 0 else run / "ranks/rank1/steps.csv"
    steps = pd.read_csv(kept)  # the survivor's data kept
    assert len(steps) >= 1 and (steps["rank"] == survivor).all()
    assert not _alive(pids[0]) and not _alive(pids[1])  # no process left behind
    # the report reads the run as failed, naming the rank, not as killed
    loaded = load_run(run)
    assert loaded.status == "failed"


@pytest.mark.slow
def test_overwrite_replaces_a_multi_rank_run_with_every_rank_kept(tmp_path):
    args = ["--steps", "4", "--warmup", "1", "--trace-wait", "1", "--trace-warmup", "1",
            "--trace-active", "1"]
    first = subprocess.run(standalone(2, profile_args(tmp_path, "again", *args)), env=env(),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "again"
    old = {r["rank"]: r["pid"] for r in meta_of(run)["distributed"]["ranks"]}
    old_traces = set(p.name for p in run.glob("rank*.pt.trace.json.gz"))
    refused = subprocess.run(standalone(2, profile_args(tmp_path, "again", *args)), env=env(),
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr
    again = subprocess.run(standalone(2, profile_args(tmp_path, "again", *args, "--overwrite")),
                           env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    meta = meta_of(run)
    new = {r["rank"]: r["pid"] for r in meta["distributed"]["ranks"]}
    assert meta["status"] == "complete" and set(new) == {0, 1}
    assert all(new[r] != old[r] for r in (0, 1))
    rank1 = json.loads((run / "ranks/rank1" / RUN_JSON).read_text())
    assert rank1["status"] == "complete" and rank1["distributed"]["pid"] == new[1]
    for path in (run / "steps.csv", run / "ranks/rank1/steps.csv"):
        assert len(pd.read_csv(path)) == 4
    traces_now = set(p.name for p in run.glob("rank*.pt.trace.json.gz"))
    assert len(traces_now) == 2 and not traces_now & old_traces  # the old run's are gone
    assert not [p for p in tmp_path.iterdir() if ".new-" in p.name]  # no staging left


@pytest.mark.slow
@pytest.mark.parametrize("target", ["torchrun", "group"])
def test_sigint_to_torchrun_interrupts_every_rank(tmp_path, target):
    proc = _start(standalone(2, profile_args(tmp_path, "stop", "--mode", "light",
                                             "--steps", "100000")))
    run = tmp_path / "stop"
    pids = _wait_for_rank_steps(run)
    time.sleep(1.0)
    if target == "torchrun":
        proc.send_signal(signal.SIGINT)  # torchrun alone (it forwards the signal)
    else:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: torchrun and the ranks
    out = _finish(proc)
    meta = meta_of(run)
    assert meta["status"] == "interrupted", out[-3000:]
    statuses = [r["status"] for r in meta["distributed"]["ranks"]]
    assert statuses == ["interrupted", "interrupted"], meta["distributed"]["ranks"]
    assert len(pd.read_csv(run / "steps.csv")) >= 1
    assert len(pd.read_csv(run / "ranks/rank1/steps.csv")) >= 1
    assert not _alive(pids[0]) and not _alive(pids[1])


@pytest.mark.slow
def test_two_nodes_without_a_shared_file_system_then_merge(tmp_path):
    port = free_port()
    nodes = []
    for k in (0, 1):
        launch = [*TORCHRUN, "--nnodes", "2", "--node-rank", str(k), "--nproc-per-node", "1",
                  "--master-addr", "127.0.0.1", "--master-port", str(port)]
        nodes.append(_start([*launch, *profile_args(tmp_path / f"node{k}", "multi",
                                                    "--steps", "6", "--trace-wait", "1",
                                                    "--trace-warmup", "1",
                                                    "--trace-active", "2")]))
    outs = [_finish(p, 300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    node0, node1 = tmp_path / "node0/multi", tmp_path / "node1/multi"
    # rank 0 knows every rank's end through the process group, not through files
    assert not (node0 / "ranks").exists()
    assert [r["status"] for r in meta_of(node0)["distributed"]["ranks"]] == ["complete"] * 2
    assert not (node1 / RUN_JSON).exists() and (node1 / "ranks/rank1" / RUN_JSON).is_file()
    merged = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-m", "profiler", "merge", str(node0), str(node1),
                           "--out", str(merged)], env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "complete; ranks 0 complete, 1 complete" in proc.stdout
    meta = meta_of(merged)
    assert meta["status"] == "complete" and meta["distributed"]["missing_ranks"] == []
    assert sorted(traces(merged)) == [0, 1]
    assert (merged / "ranks/rank1/steps.csv").is_file() and (merged / "steps.csv").is_file()
    # a second merge into the same place, or a rank given twice, is refused
    again = subprocess.run([sys.executable, "-m", "profiler", "merge", str(node0), str(node1),
                            str(merged), "--out", str(tmp_path / "twice")], env=env(),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "exactly one source" in again.stderr
    assert not (tmp_path / "twice").exists()


@pytest.mark.slow
@pytest.mark.skipif(not TENSORBOARD.exists(), reason="no tensorboard executable in this env")
def test_tensorboard_lists_one_worker_per_rank_and_the_distributed_view(two_ranks):
    with tensorboard(two_ranks.parent) as server:
        base = server + "/data/plugin/pytorch_profiler"
        runs = poll(lambda: (lambda d: d if "two" in d["runs"] and not d["loading"] else None)(
            get_json(base, "/runs")))
        assert runs["runs"] == ["two"]
        views = get_json(base, "/views", run="two")
        assert "Distributed" in views and "Overview" in views, views
        assert get_json(base, "/workers", run="two", view="Overview") == ["rank0", "rank1"]
        workers = get_json(base, "/workers", run="two", view="Distributed")
        assert workers == ["All"], workers
        spans = get_json(base, "/spans", run="two", worker="All")
        ops = get_json(base, "/distributed/commops", run="two", worker="All", span=spans[0])
        assert sorted(ops["data"]) == ["rank0", "rank1"]  # per rank: its collectives
        for table in ops["data"].values():
            assert [row[0] for row in table["rows"]] == ["gloo:all_reduce"]
            assert table["rows"][0][1] >= 2  # calls: one per traced step at least


@pytest.mark.slow
def test_a_user_script_with_profiler_profile_under_torchrun(tmp_path):
    script = Path(__file__).resolve().parents[1] / "examples" / "ddp_mlp.py"
    run = tmp_path / "mine"
    proc = subprocess.run(standalone(2, [str(script), str(run), "8"]), env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = meta_of(run)
    assert meta["status"] == "complete"
    assert meta["distributed"]["launcher"] == "torchrun"
    assert [r["status"] for r in meta["distributed"]["ranks"]] == ["complete", "complete"]
    assert sorted(traces(run)) == [0, 1]
    for r, path in ((0, run / "steps.csv"), (1, run / "ranks/rank1/steps.csv")):
        s = pd.read_csv(path)
        assert (s["rank"] == r).all() and len(s) == 8 and (s["comm_calls"] >= 1).all()


def test_the_report_shows_per_rank_figures_and_a_same_run_stays_within_noise(two_ranks,
                                                                              tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "profiler", "report", str(two_ranks),
                           str(two_ranks), "--out", str(out), "--fail-on-regression", "5%"],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "report.md").read_text()
    assert "## Ranks" in md and "| gloo:all_reduce | 2 |" in md
    assert (out / "plots" / "ranks.png").stat().st_size > 0
    summary = pd.read_csv(out / "summary.csv")
    rows = summary[summary["section"] == "distributed"].set_index("metric")
    share = rows.loc["communication share of step time"]
    assert share["gated"] and share["verdict"] == "within noise" and share["base"] > 0
    ratio = rows.loc["straggler ratio (slowest / median rank compute)"]
    assert ratio["gated"] and ratio["verdict"] == "within noise" and ratio["base"] >= 1.0
    for rank in (0, 1):
        assert f"\n| {rank} | " in md  # a per-rank row
    # the trace's overlap beside the hook's, as recorded per rank
    header = next(line for line in md.splitlines() if line.startswith("| rank | host |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    column = cells.index("overlap (trace)")
    recorded = {r["rank"]: r["trace_comm"]["overlap_pct"]
                for r in meta_of(two_ranks)["distributed"]["ranks"]}
    for rank in (0, 1):
        row = next(line for line in md.splitlines() if line.startswith(f"| {rank} | "))
        shown = [c.strip() for c in row.strip("|").split("|")][column]
        assert shown == f"{recorded[rank]:.1f}%"


@pytest.mark.slow
def test_one_rank_against_two_needs_force_and_gives_the_scaling(two_ranks, tmp_path):
    one = tmp_path / "one"
    proc = subprocess.run(standalone(1, profile_args(tmp_path, "one", "--steps", "8",
                                                     "--warmup", "2", "--mode", "light")),
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert meta_of(one)["distributed"]["world_size"] == 1
    report = [sys.executable, "-m", "profiler", "report", str(one), str(two_ranks),
              "--out", str(tmp_path / "r")]
    refused = subprocess.run(report, env=env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "world size (ranks) differs: 1 vs 2" in refused.stderr
    forced = subprocess.run([*report, "--force"], env=env(), capture_output=True, text=True,
                            timeout=300)
    assert forced.returncode == 0, forced.stderr[-3000:]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "scaling efficiency" in md and "(1 rank(s)) -> two (2 ranks)" in md


@pytest.mark.slow
def test_a_hung_rank_times_the_collectives_out_instead_of_waiting_forever(tmp_path):
    proc = subprocess.Popen(
        standalone(2, profile_args(tmp_path, "hang", "--mode", "light", "--steps", "100000",
                                   "--collective-timeout", "5")),
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    run = tmp_path / "hang"
    pids = _wait_for_rank_steps(run)
    time.sleep(1.0)
    os.kill(pids[1], signal.SIGSTOP)  # rank 1 hangs: rank 0's all-reduce waits for it
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "ranks" not in meta_of(run)["distributed"]:
            time.sleep(0.5)
        meta = meta_of(run)
    finally:
        os.kill(pids[1], signal.SIGCONT)
        out = _finish(proc)
    assert meta["status"] == "failed", out[-3000:]
    assert meta["distributed"]["timeout_s"] == 5.0
    ranks = {r["rank"]: r for r in meta["distributed"]["ranks"]}
    assert ranks[0]["status"] == "failed"  # its collective timed out after 5 s
    assert meta["error"]["rank"] == 1 and meta["distributed"]["failed_ranks"] == [1]
    assert not _alive(pids[0]) and not _alive(pids[1])
