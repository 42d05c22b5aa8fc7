"""profile under faults, through the real CLI in subprocesses: SIGKILL, SIGTERM during
post-processing, a full disk, a closed pipe, two runs on one name, --overwrite, bad
output paths, permissions, progress lines."""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from robust_helpers import ENV, fill, profile_cmd, report_cmd, run, tiny_tmpfs

from profiler.parse.run import load_run
from profiler.rundir import RUN_JSON


def start(cmd: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, **kw)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 240) -> list[str]:
    """Read stderr lines until one starts with ``prefix``; returns the lines read."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            return lines
    proc.kill()
    raise AssertionError(f"no line starting {prefix!r}: {''.join(lines)}")


def test_sigkill_keeps_every_heartbeat_and_reads_as_killed(tmp_path):
    proc = start(profile_cmd(tmp_path, "k", "--mode", "light", "--steps", "500",
                             "--warmup", "1", "--monitor-interval", "2"))
    lines = wait_for_line(proc, "step 6/500")
    proc.kill()  # SIGKILL: no handler, no finish
    proc.wait(timeout=30)
    assert any("ETA" in line for line in lines)  # plain progress lines off a terminal
    run_dir = tmp_path / "k"
    meta = json.loads((run_dir / RUN_JSON).read_text())
    assert meta["status"] == "running"  # what the dead writer left
    # run.jsonc is written off the training thread: at most one heartbeat behind steps.csv.
    assert meta["heartbeat"]["steps_completed"] >= 4 and meta["heartbeat"]["pid"] == proc.pid
    steps = pd.read_csv(run_dir / "steps.csv")
    # Every step up to the heartbeat that printed "step 6/500" is on disk, complete.
    assert len(steps) >= 6 and steps["step"].tolist() == list(range(len(steps)))
    assert steps["wall_ms"].notna().all()
    loaded = load_run(run_dir)
    assert loaded.status == "killed"
    assert any("ended without finishing (killed)" in w and "at most 2 steps" in w
               for w in loaded.warnings)
    done = run(report_cmd(run_dir, run_dir, tmp_path / "rep"))
    assert done.returncode == 0, done.stderr
    assert "ended without finishing (killed)" in done.stderr
    assert "| killed |" in (tmp_path / "rep" / "report.md").read_text()
    # The dead process does not hold the name: a new run with --overwrite takes it.
    again = run(profile_cmd(tmp_path, "k", "--mode", "light", "--steps", "2", "--warmup", "0",
                            "--overwrite"))
    assert again.returncode == 0, again.stderr
    assert json.loads((run_dir / RUN_JSON).read_text())["status"] == "complete"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".k")) == []


def test_sigterm_during_post_processing_ends_interrupted_with_complete_files(tmp_path):
    proc = start(profile_cmd(tmp_path, "fin", "--steps", "8", "--warmup", "1"))
    lines = wait_for_line(proc, "post-processing the trace window")
    assert any(line.startswith("exporting the torch.profiler trace") for line in lines)
    assert any(line.startswith("trace exported in") for line in lines)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run_dir = tmp_path / "fin"
    meta = json.loads((run_dir / RUN_JSON).read_text())
    assert meta["status"] == "interrupted" and meta["steps_completed"] == 8
    assert "during post-processing" in meta["error"]["message"]
    assert len(pd.read_csv(run_dir / "steps.csv")) == 8
    assert not pd.read_csv(run_dir / "operators.csv").empty  # written before the heavy part
    for csv in run_dir.glob("*.csv"):
        pd.read_csv(csv)  # every file present is whole
    assert [p for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []
    for trace in run_dir.glob("*.pt.trace.json.gz"):
        json.loads(gzip.decompress(trace.read_bytes()))


def test_disk_full_during_profile_is_a_clean_failure(tmp_path):
    with tiny_tmpfs(tmp_path / "disk", "300k") as disk:
        fill(disk, 150 * 1024)
        done = run(profile_cmd(disk, "full", "--steps", "4", "--warmup", "1"))
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        meta = json.loads((disk / "full" / RUN_JSON).read_text())
        if meta["status"] == "failed":
            assert meta["error"]["message"].startswith("no space left on ")
            assert "run: failed" in done.stdout
        else:  # not even the last small write fitted: the last heartbeat stays, valid
            assert meta["status"] == "running"
            assert "run.jsonc could not be updated (no space left on" in done.stdout
        steps = pd.read_csv(disk / "full" / "steps.csv")
        assert steps["step"].tolist() == list(range(len(steps)))
        for trace in (disk / "full").glob("*.pt.trace.json*"):
            json.loads(gzip.decompress(trace.read_bytes()))  # no truncated trace left
        assert [p for p in (disk / "full").iterdir() if p.name.endswith(".tmp")] == []


def test_disk_full_before_the_first_record_leaves_nothing(tmp_path):
    with tiny_tmpfs(tmp_path / "disk", "64k") as disk:
        fill(disk, 0)
        done = run(profile_cmd(disk, "none", "--steps", "2", "--mode", "light"))
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: no space left on ")
        assert not (disk / "none").exists()


def test_closed_pipe_does_not_change_the_run(tmp_path):
    cmd = " ".join(f"'{c}'" for c in profile_cmd(tmp_path, "pipe", "--mode", "light",
                                                   "--steps", "12", "--warmup", "1",
                                                   "--monitor-interval", "1"))
    done = subprocess.run(["bash", "-c", f"{cmd} 2>&1 | head -n 1; echo ${{PIPESTATUS[0]}}"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.stdout.splitlines()[-1] == "0", done.stdout + done.stderr
    meta = json.loads((tmp_path / "pipe" / RUN_JSON).read_text())
    assert meta["status"] == "complete" and meta["steps_completed"] == 12


def test_two_runs_on_one_name_one_is_refused_in_one_line(tmp_path):
    cmd = profile_cmd(tmp_path, "same", "--mode", "light", "--steps", "40", "--warmup", "1",
                      "--overwrite")
    procs = [start(cmd), start(cmd)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "Traceback" not in refused
    assert refused.strip().splitlines()[-1].startswith("error: run directory ")
    assert "is in use by another profile (pid " in refused
    meta = json.loads((tmp_path / "same" / RUN_JSON).read_text())
    assert meta["status"] == "complete" and meta["steps_completed"] == 40
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_record(tmp_path):
    first = run(profile_cmd(tmp_path, "keep", "--mode", "light", "--steps", "4"))
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "keep" / RUN_JSON).read_bytes()
    bad = run(profile_cmd(tmp_path, "keep", "--mode", "light", "--steps", "4", "--overwrite",
                          "--set", "lr=-1"))
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: lr must be a finite number >= 0, got -1.0"
    assert (tmp_path / "keep" / RUN_JSON).read_bytes() == before
    again = run(profile_cmd(tmp_path, "keep", "--mode", "light", "--steps", "6",
                            "--overwrite"))
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "keep" / RUN_JSON).read_text())["steps_completed"] == 6
    assert ("memory (allocated_bytes): insufficient data (a verdict needs 26 measured steps, "
            "this run has 3: run with --steps 29 or more)") in again.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unusable_output_directory_is_one_line(tmp_path):
    done = run(profile_cmd(Path("/proc/nope"), "x", "--steps", "2", "--mode", "light"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: cannot create run directory /proc/nope/x: ")
    assert "Traceback" not in done.stderr


def test_every_file_of_a_run_and_a_report_follows_the_umask(tmp_path):
    done = run(profile_cmd(tmp_path, "perm", "--steps", "5", "--warmup", "1"),
               preexec_fn=lambda: os.umask(0o027))
    assert done.returncode == 0, done.stderr
    files = [p for p in (tmp_path / "perm").iterdir()]
    assert {RUN_JSON, "steps.csv", "operators.csv", "allocations.csv"} <= {p.name for p in files}
    assert any(p.name.endswith(".pt.trace.json.gz") for p in files)
    assert any(p.name.startswith("events.out.tfevents") for p in files)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        p.name: oct(0o640) for p in files}
    assert stat.S_IMODE((tmp_path / "perm").stat().st_mode) == 0o750
    rep = run(report_cmd(tmp_path / "perm", tmp_path / "perm", tmp_path / "rep"),
              preexec_fn=lambda: os.umask(0o027))
    assert rep.returncode == 0, rep.stderr
    report_files = [p for p in (tmp_path / "rep").rglob("*")]
    assert len(report_files) >= 5
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in report_files} == {oct(0o640),
                                                                             oct(0o750)}


def test_console_scripts_name_themselves():
    bindir = Path(sys.executable).parent
    for script, name in (("efprof", "efprof"), ("energy-flow", "energy-flow")):
        done = run([str(bindir / script), "--help"])
        assert done.returncode == 0
        assert done.stdout.startswith(f"usage: {name} "), done.stdout


def test_overwrite_run_that_records_no_step_leaves_the_old_run(tmp_path):
    import io

    import torch

    from energy_flow.config import make_config
    from profiler.collect.nvml import NvmlConfig
    from profiler.collect.session import ProfileOptions
    from profiler.collect.tracing import TraceSchedule
    from profiler.collect.workload import make_energy_flow_workload
    from profiler.profiling import run_profile

    tiny = dict(lattice_width=4, lattice_height=4, lattice_depth=4, batch_size=2,
                carrier_hidden=16, carrier_layers=1, mapper_hidden=32, max_flows=1000)

    def options(overwrite):
        return ProfileOptions(run_dir=tmp_path / "old", name="old", preset="debug",
                              variant="after", pool="off", mode="light", steps=3, warmup=1,
                              monitor_interval=2, overrides=tiny, nvml=NvmlConfig(),
                              trace=TraceSchedule(), overwrite=overwrite)

    def broken(config, device, pool):
        raise RuntimeError("workload cannot start")

    config, cpu = make_config("debug", **tiny), torch.device("cpu")
    assert run_profile(options(False), config, cpu, make_energy_flow_workload,
                       log=io.StringIO())["status"] == "complete"
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    meta = run_profile(options(True), config, cpu, broken, log=io.StringIO())
    assert meta["status"] == "failed" and meta["kept_previous_run"] is True
    assert meta["error"]["message"] == "workload cannot start"
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no staging, no lock left
