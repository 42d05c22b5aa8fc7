"""report on damaged input and under a full disk, through the real CLI in subprocesses."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from robust_helpers import fill, profile_cmd, report_cmd, run, tiny_tmpfs

from profiler.collect.progress import StepProgress
from profiler.rundir import RUN_JSON


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """One real light-mode run of 12 steps."""
    out = tmp_path_factory.mktemp("runs")
    done = run(profile_cmd(out, "good", "--mode", "light", "--steps", "12", "--warmup", "2"))
    assert done.returncode == 0, done.stderr
    return out / "good"


def damaged(good, tmp_path, edit_steps=None, edit_meta=None):
    copy = tmp_path / "copy"
    shutil.copytree(good, copy)
    if edit_steps is not None:
        path = copy / "steps.csv"
        path.write_text(edit_steps(path.read_text()))
    if edit_meta is not None:
        meta = json.loads((copy / RUN_JSON).read_text())
        edit_meta(meta)
        (copy / RUN_JSON).write_text(json.dumps(meta))
    return copy


def test_row_cut_mid_line_is_dropped_with_a_note(good, tmp_path):
    text = (good / "steps.csv").read_text()
    copy = damaged(good, tmp_path, edit_steps=lambda t: t[:-40])  # last row cut
    done = run(report_cmd(good, copy, tmp_path / "rep"))
    assert done.returncode == 0, done.stderr
    assert "steps.csv: last line cut mid-row" in done.stderr and ", dropped" in done.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    rows = len(text.splitlines()) - 1
    # base: 10 measured steps; the copy lost its last row: 9.
    assert rows == 12
    assert "| base | good |" in md and "| complete | 2 | 10 | warm-up steps out | 0 | 0 |" in md
    assert "| complete | 2 | 9 | warm-up steps out | 0 | 0 |" in md


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("measured,", "measured,abc", 1).replace(",abc", ",abc", 1),
     "holds a non-number"),
    (lambda t: "\n".join(line if i != 4 else ",".join(line.split(",")[:5])
                         for i, line in enumerate(t.splitlines())) + "\n",
     "data row 4 has 5 cells, the header has"),
])
def test_damaged_rows_are_refused_naming_the_file(good, tmp_path, edit, message):
    copy = damaged(good, tmp_path, edit_steps=edit)
    done = run(report_cmd(good, copy, tmp_path / "rep"))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {copy / 'steps.csv'}: ") and message in last
    assert not (tmp_path / "rep").exists()


def test_schema_version_newer_refused_older_noted(good, tmp_path):
    copy = damaged(good, tmp_path, edit_meta=lambda m: m.update(schema_version=99))
    done = run(report_cmd(good, copy, tmp_path / "rep"))
    assert done.returncode == 2
    assert "schema_version 99 is newer than this profiler reads (up to 1)" in done.stderr
    shutil.rmtree(copy)
    copy = damaged(good, tmp_path, edit_meta=lambda m: m.update(schema_version=0))
    done = run(report_cmd(good, copy, tmp_path / "rep"))
    assert done.returncode == 0, done.stderr
    assert "schema_version 0 is older than this profiler's 1; read what it can" in done.stderr


def test_nan_and_inf_are_counted_shown_and_left_out(good, tmp_path):
    def poison(text):
        lines = text.splitlines()
        header = lines[0].split(",")
        wall, loss = header.index("wall_ms"), header.index("loss")
        for i, value, col in ((5, "inf", wall), (6, "nan", wall), (7, "-inf", loss)):
            cells = lines[i].split(",")
            cells[col] = value
            lines[i] = ",".join(cells)
        return "\n".join(lines) + "\n"

    copy = damaged(good, tmp_path, edit_steps=poison)
    done = run(report_cmd(good, copy, tmp_path / "rep"))
    assert done.returncode == 0, done.stderr
    assert "2 NaN / inf value(s) where a finite number is required" in done.stderr
    assert "steps.csv:wall_ms 2" in done.stderr
    assert "1 step(s) with a non-finite loss not marked skipped; counted as skipped" in done.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    # new: 10 measured steps less the 2 without a finite time; 1 skipped; 2 values left out
    assert "| complete | 2 | 8 | warm-up steps out | 1 | 2 |" in md
    assert "NaN / inf values left out" in md


def test_report_over_an_old_one_on_a_full_disk_leaves_the_old_whole(good, tmp_path):
    with tiny_tmpfs(tmp_path / "disk", "1m") as disk:
        first = run(report_cmd(good, good, disk / "rep"))
        assert first.returncode == 0, first.stderr
        old = {p.relative_to(disk): p.read_bytes() for p in (disk / "rep").rglob("*")
               if p.is_file()}
        fill(disk, 20 * 1024)
        done = run(report_cmd(good, good, disk / "rep", "--top", "3"))
        assert done.returncode == 2 and "Traceback" not in done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: no space left on ") and "is unchanged" in last
        now = {p.relative_to(disk): p.read_bytes() for p in (disk / "rep").rglob("*")
               if p.is_file()}
        assert now == old
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "rep"]
        (disk / "filler").unlink()
        fill(disk, 20 * 1024)
        done = run(report_cmd(good, good, disk / "fresh"))
        assert done.returncode == 2 and not (disk / "fresh").exists()
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "rep"]


def test_progress_bar_on_a_terminal_shows_step_eta_time_loss_memory():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = StepProgress(5, stream)
    for i in range(3):
        bar.step(i + 1, {"wall_ms": 12.5, "loss": 0.25, "rss_bytes": 300 * 2**20,
                         "allocated_bytes": 2**20})
    bar.say("exporting the torch.profiler trace ...")
    bar.close()
    text = stream.getvalue()
    assert "3/5" in text and "<" in text  # tqdm: n/total and elapsed<remaining (ETA)
    assert "wall 12.5 ms loss 0.25 rss 300 MiB allocated 1.0 MiB" in text
    assert "exporting the torch.profiler trace ..." in text


def test_plain_progress_lines_every_interval_and_every_30_s():
    import io

    now = [0.0]
    stream = io.StringIO()
    progress = StepProgress(100, stream, every_steps=10, every_s=30.0, tty=False,
                            clock=lambda: now[0])
    row = {"wall_ms": 20000.0, "loss": 1.0}
    for done in range(1, 13):
        now[0] = done * 20.0  # 20 s per step
        progress.step(done, row)
    lines = stream.getvalue().splitlines()
    # every 30 s (at 40 s, 80 s, ...) and at step 10
    assert [line.split()[1] for line in lines] == ["2/100", "4/100", "6/100", "8/100",
                                                   "10/100", "12/100"]
    assert lines[0].endswith("elapsed 40s ETA 32m40s")


def test_verdict_that_needs_more_steps_says_how_many(good):
    meta = json.loads((good / RUN_JSON).read_text())
    assert meta["memory_growth"]["verdict"] == "insufficient data"
    assert meta["memory_growth"]["steps_needed"] == 26
    steps = pd.read_csv(good / "steps.csv")
    assert len(steps) == 12


def test_running_record_from_another_host_reads_killed_once_its_heartbeat_is_stale(good,
                                                                                   tmp_path):
    import time

    def stale(meta):
        meta["status"] = "running"
        meta["heartbeat"] = {"at": "2020-01-01T00:00:00+00:00", "ts": time.time() - 3600,
                             "steps_completed": 12, "pid": 1, "host": "elsewhere",
                             "interval_steps": 10, "every_s": 5.0}

    copy = damaged(good, tmp_path, edit_meta=stale)
    done = run(report_cmd(good, copy, tmp_path / "rep"))
    assert done.returncode == 0, done.stderr
    assert "ended without finishing (killed): 12 of 12 steps recorded, the last step " \
           "reached is 11" in done.stderr
    assert "at most 10 steps after it are missing" in done.stderr
    meta = json.loads((copy / RUN_JSON).read_text())
    meta["heartbeat"]["ts"] = time.time()  # fresh: still running elsewhere
    (copy / RUN_JSON).write_text(json.dumps(meta))
    done = run(report_cmd(good, copy, tmp_path / "rep"))
    assert done.returncode == 0, done.stderr
    assert "is still running (12 of 12 steps recorded" in done.stderr


def test_killed_report_leaves_no_temporary_folder_for_the_next_one(good, tmp_path):
    leftover = tmp_path / ".rep.tmp-999999999-abc123"  # a report killed mid-write
    leftover.mkdir()
    (leftover / "report.md").write_text("half")
    done = run(report_cmd(good, good, tmp_path / "rep"))
    assert done.returncode == 0, done.stderr
    assert not leftover.exists() and (tmp_path / "rep" / "report.md").is_file()
