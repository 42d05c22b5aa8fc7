"""Synthetic run directories (written through the run-directory contract) and the loader's
validation (``write_run``: the fixture in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from profiler import rundir
from profiler.errors import RunDirError
from profiler.parse.run import load_run


def test_load_run_reads_every_table(write_run, tmp_path):
    run = load_run(write_run(tmp_path / "a", steps=12, warmup=2, nvml=True))
    assert run.name == "a" and run.status == "complete" and run.warnings == ()
    assert len(run.steps) == 12 and len(run.measured) == 10
    assert len(run.memory) == 12 * (8 + 3)  # 8 regions and 3 roles per step
    assert len(run.nvml) == 20 and list(run.operators["name"]) == ["aten::mm", "aten::gru",
                                                                   "aten::add"]


def test_incomplete_run_is_loaded_with_a_warning(write_run, tmp_path):
    run = load_run(write_run(tmp_path / "a", steps=8, status="oom"))
    assert run.warnings == ("run a has status 'oom', not 'complete'",)


def test_optional_tables_may_be_absent(write_run, tmp_path):
    path = write_run(tmp_path / "a", steps=8)
    (path / rundir.OPERATORS_CSV).unlink()
    (path / rundir.MEMORY_BY_CATEGORY_CSV).unlink()
    run = load_run(path)
    assert run.operators is None and run.memory is None and run.nvml is None


def test_progress_names_each_file(write_run, tmp_path):
    lines: list[str] = []
    load_run(write_run(tmp_path / "a", steps=8), lines.append)
    reads = [line for line in lines if line.startswith("reading ")]
    assert [Path(line.split()[1]).name for line in reads] == [
        rundir.STEPS_CSV, rundir.MEMORY_BY_CATEGORY_CSV, rundir.OPERATORS_CSV]


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / rundir.RUN_JSON).unlink(), r"run\.jsonc: missing"),
    (lambda p: (p / rundir.RUN_JSON).write_text("{not json"), r"run\.jsonc: not valid JSON"),
    (lambda p: (p / rundir.RUN_JSON).write_text("[1]"), r"run\.jsonc: expected a JSON object"),
    (lambda p: _edit_meta(p, status="weird"), r"run\.jsonc: unknown status 'weird'"),
    (lambda p: _edit_meta(p, drop="config"), r"run\.jsonc: missing key\(s\) config"),
    (lambda p: (p / "steps.csv").unlink(), r"steps\.csv: missing$"),
    (lambda p: (p / "steps.csv").write_text(""), r"steps\.csv: empty file"),
    (lambda p: _edit_csv(p / "steps.csv", drop="wall_ms"), r"steps\.csv: missing column\(s\) wall_ms"),
    (lambda p: _edit_csv(p / "steps.csv", set_=("wall_ms", 3, "fast")),
     r"steps\.csv: column 'wall_ms' holds a non-number 'fast' at data row 4"),
    (lambda p: _edit_csv(p / "steps.csv", set_=("phase", 0, "train")),
     r"steps\.csv: column 'phase' must be one of warmup, measured; found train"),
    (lambda p: _edit_csv(p / "memory_by_category.csv", drop="peak_bytes"),
     r"memory_by_category\.csv: missing column\(s\) peak_bytes"),
    (lambda p: (p / "operators.csv").write_bytes(b'name,count\n"unterminated,1\n'),
     r"operators\.csv: (not a readable CSV|missing column)"),
])
def test_damaged_run_names_file_and_problem(write_run, tmp_path, damage, message):
    path = write_run(tmp_path / "a", steps=8)
    damage(path)
    with pytest.raises(RunDirError, match=message):
        load_run(path)


def test_missing_directory(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        load_run(tmp_path / "nope")


def _edit_meta(path: Path, status: str | None = None, drop: str | None = None) -> None:
    meta = json.loads((path / rundir.RUN_JSON).read_text())
    if status is not None:
        meta["status"] = status
    if drop is not None:
        del meta[drop]
    (path / rundir.RUN_JSON).write_text(json.dumps(meta))


def _edit_csv(file: Path, drop: str | None = None, set_: tuple | None = None) -> None:
    table = pd.read_csv(file)
    if drop is not None:
        table = table.drop(columns=[drop])
    if set_ is not None:
        column, row, value = set_
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
    table.to_csv(file, index=False)
