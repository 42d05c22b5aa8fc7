"""``python -m profiler report`` through a real subprocess: files, messages, exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from profiler.rundir import RUN_JSON

pytestmark = pytest.mark.slow  # subprocesses / servers: end-to-end

def report(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "profiler", "report", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, write_run):
    root = tmp_path_factory.mktemp("cli")
    return {
        "base": write_run(root / "base", steps=30, seed=1),
        "same": write_run(root / "same", steps=30, seed=2),
        "slow": write_run(root / "slow", steps=30, seed=3, wall_ms=24.0),
        "other_preset": write_run(root / "exp", steps=30, seed=4, preset="experiment",
                                  lattice=(8, 8, 8)),
        "failed": write_run(root / "failed", steps=30, seed=5, status="failed"),
        "root": root,
    }


def test_default_output_directory_and_exit_0(runs):
    proc = report(runs["base"], runs["same"], "--fail-on-regression", "5%", cwd=runs["root"])
    assert proc.returncode == 0, proc.stderr
    out = runs["root"] / "reports" / "base_vs_same"
    for name in ("report.md", "report.html", "summary.csv"):
        assert (out / name).is_file()
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.loc[summary["kind"] == "timed", "verdict"]) == {"within noise"}
    assert set(summary.loc[summary["kind"] == "exact", "verdict"]) == {"equal"}
    assert f"reading {runs['base'] / 'steps.csv'}" in proc.stderr  # progress on stderr
    assert "report: reports/base_vs_same/report.md" in proc.stdout


def test_regression_gate_exit_1_names_metrics(runs, tmp_path):
    proc = report(runs["base"], runs["slow"], "--out", tmp_path / "r",
                  "--fail-on-regression", "5%")
    assert proc.returncode == 1, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    found = re.fullmatch(r"error: regression beyond 5\.0%: step time \((\d\.\d+)x\), "
                         r"step time \(p90\) \((\d\.\d+)x\)", message)
    assert found, message
    assert 1.15 < float(found[1]) < 1.25 and 1.1 < float(found[2]) < 1.3  # 24 ms vs 20 ms
    assert (tmp_path / "r" / "report.html").is_file()  # the report is written anyway
    # a looser gate passes the same comparison
    loose = report(runs["base"], runs["slow"], "--out", tmp_path / "r2",
                   "--fail-on-regression", "25%")
    assert loose.returncode == 0, loose.stderr
    assert re.search(r"worse   step time: 1\.[12]\d+x", loose.stdout), loose.stdout


def test_not_comparable_exit_2_unless_forced(runs, tmp_path):
    proc = report(runs["base"], runs["other_preset"], "--out", tmp_path / "r")
    assert proc.returncode == 2
    assert ("preset differs: debug vs experiment; lattice (W x H x D) differs: "
            "4 x 4 x 4 vs 8 x 8 x 8 (use --force") in proc.stderr
    assert not (tmp_path / "r").exists()
    forced = report(runs["base"], runs["other_preset"], "--out", tmp_path / "r", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "WARNING: runs are not comparable (compared with --force)" in forced.stderr
    assert "not comparable" in (tmp_path / "r" / "report.md").read_text()


def test_status_warning_and_missing_file(runs, tmp_path):
    proc = report(runs["base"], runs["failed"], "--out", tmp_path / "r")
    assert proc.returncode == 0
    assert "WARNING: run failed has status 'failed', not 'complete'" in proc.stderr
    (runs["root"] / "broken").mkdir()
    broken = report(runs["base"], runs["root"] / "broken", "--out", tmp_path / "r3")
    assert broken.returncode == 2
    assert broken.stderr.strip().endswith(
        f"{runs['root'] / 'broken' / RUN_JSON}: missing (is {runs['root'] / 'broken'} "
        "a run directory?)")


def test_bad_threshold_is_a_usage_error(runs, tmp_path):
    proc = report(runs["base"], runs["same"], "--fail-on-regression", "lots")
    assert proc.returncode == 2
    assert "expected a percentage such as 5%, got 'lots'" in proc.stderr
