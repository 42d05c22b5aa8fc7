"""Load a run directory (see ``profiler.rundir``) into DataFrames, validating as it goes.

``load_run(path)`` returns a :class:`Run`: the parsed ``run.json`` and the
tables the report needs. Every problem raises ``RunDirError`` naming the file
and what is wrong with it. ``allocations.csv`` is not loaded: the report works
from the per-step and per-category tables, which summarize it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from profiler import rundir
from profiler.errors import RunDirError

Progress = Callable[[str], None]

# run.json keys the report cannot do without; the others are read when present.
REQUIRED_RUN_KEYS = ("name", "status", "config", "device")
# Columns that must hold numbers (empty cells are allowed and read as NaN).
_TEXT_COLUMNS = {"phase", "view", "category", "name", "device", "op", "region", "role", "gpu"}


@dataclass(frozen=True)
class Run:
    """One loaded run directory. Optional tables are None when their file is absent."""

    path: Path
    meta: dict[str, Any]
    steps: pd.DataFrame
    memory: pd.DataFrame | None = None
    nvml: pd.DataFrame | None = None
    operators: pd.DataFrame | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # every rank's steps.csv and operators.csv (rank 0: ``steps`` / ``operators``), and
    # each rank's record (run.jsonc distributed.ranks; a one-process run: rank 0 only)
    rank_steps: dict[int, pd.DataFrame] = field(default_factory=dict)
    rank_operators: dict[int, pd.DataFrame | None] = field(default_factory=dict)
    rank_records: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return int((self.meta.get("distributed") or {}).get("world_size") or 1)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    @property
    def status(self) -> str:
        return str(self.meta.get("status"))

    @property
    def measured(self) -> pd.DataFrame:
        """steps.csv rows of the measured phase (warm-up excluded)."""
        return self.steps[self.steps["phase"] == "measured"]


def load_run(path: Path | str, progress: Progress | None = None) -> Run:
    """Load and validate ``path``; ``progress`` receives one line per file read."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise RunDirError(f"{path} is not a directory")
    say = progress or (lambda _msg: None)
    meta = _read_meta(rundir.run_json_path(path))
    steps = _read_table(path / rundir.STEPS_CSV, rundir.STEPS_COLUMNS, say, required=True,
                        optional=rundir.OPTIONAL_STEPS_COLUMNS)
    assert steps is not None  # required=True raised otherwise
    _check_steps(path / rundir.STEPS_CSV, steps)
    memory = _read_table(path / rundir.MEMORY_BY_CATEGORY_CSV, rundir.MEMORY_COLUMNS, say)
    nvml = _read_table(path / rundir.NVML_CSV, rundir.NVML_COLUMNS, say)
    operators = _read_table(path / rundir.OPERATORS_CSV, rundir.OPERATOR_COLUMNS, say)
    warnings = []
    if meta["status"] != "complete":
        warnings.append(f"run {meta['name']!s} has status {meta['status']!r}, not 'complete'"
                        + _error_suffix(meta))
    if not (steps["phase"] == "measured").any():
        warnings.append(f"run {meta['name']!s} has no measured steps (only warm-up)")
    rank_steps, rank_operators = {0: steps}, {0: operators}
    for rank, folder in rundir.rank_dirs(path).items():
        if rank == 0:
            continue
        table = _read_table(folder / rundir.STEPS_CSV, rundir.STEPS_COLUMNS, say,
                            optional=rundir.OPTIONAL_STEPS_COLUMNS)
        if table is not None and not table.empty:
            rank_steps[rank] = table
        rank_operators[rank] = _read_table(folder / rundir.OPERATORS_CSV,
                                           rundir.OPERATOR_COLUMNS, say)
    info = meta.get("distributed") or {}
    records = {int(r["rank"]): r for r in info.get("ranks") or [] if isinstance(r, dict)}
    if not records:
        records = {0: {"rank": 0, "host": meta.get("host"), "status": meta.get("status")}}
    world = int(info.get("world_size") or 1)
    absent = [r for r in range(world) if r not in rank_steps]
    if absent:
        warnings.append(f"run {meta['name']!s}: no steps.csv for rank(s) "
                        f"{', '.join(map(str, absent))} (another node's files: python -m "
                        f"profiler merge)")
    return Run(path=path, meta=meta, steps=steps, memory=memory, nvml=nvml,
               operators=operators, warnings=tuple(warnings), rank_steps=rank_steps,
               rank_operators=rank_operators, rank_records=records)


def _error_suffix(meta: dict[str, Any]) -> str:
    error = meta.get("error")
    if isinstance(error, dict) and error.get("message"):
        return f" ({error.get('type') or 'error'}: {error['message']})"
    return ""


def _read_meta(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise RunDirError(f"{file}: missing (is {file.parent} a run directory?)")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{file}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{file}: expected a JSON object, got {type(meta).__name__}")
    missing = [key for key in REQUIRED_RUN_KEYS if key not in meta]
    if missing:
        raise RunDirError(f"{file}: missing key(s) {', '.join(missing)}")
    if meta["status"] not in rundir.STATUSES:
        raise RunDirError(f"{file}: unknown status {meta['status']!r}; "
                          f"expected one of {', '.join(rundir.STATUSES)}")
    for key in ("config", "device"):
        if not isinstance(meta[key], dict):
            raise RunDirError(f"{file}: {key!r} must be an object, got {type(meta[key]).__name__}")
    return meta


def _read_table(file: Path, columns: tuple[str, ...], say: Progress,
                required: bool = False, optional: tuple[str, ...] = ()) -> pd.DataFrame | None:
    if not file.is_file():
        if required:
            raise RunDirError(f"{file}: missing")
        return None
    size = file.stat().st_size
    start = time.perf_counter()
    say(f"reading {file} ({size / 2**20:.1f} MiB)")
    try:
        table = pd.read_csv(file, low_memory=False)
    except pd.errors.EmptyDataError:
        raise RunDirError(f"{file}: empty file (no header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RunDirError(f"{file}: not a readable CSV ({detail})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise RunDirError(f"{file}: missing column(s) {', '.join(missing)}")
    for column in (*columns, *(c for c in optional if c in table.columns)):
        if column in _TEXT_COLUMNS:
            continue
        values = table[column]
        if values.dtype.kind in "biuf":
            continue
        numeric = pd.to_numeric(values, errors="coerce")
        bad = numeric.isna() & values.notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise RunDirError(f"{file}: column {column!r} holds a non-number "
                              f"{values.iloc[row]!r} at data row {row + 1}")
        table[column] = numeric
    say(f"read {file.name}: {len(table)} rows in {time.perf_counter() - start:.2f} s")
    return table


def _check_steps(file: Path, steps: pd.DataFrame) -> None:
    if steps.empty:
        raise RunDirError(f"{file}: no steps recorded")
    phases = set(steps["phase"].dropna().unique())
    unknown = sorted(str(p) for p in phases - set(rundir.PHASES))
    if unknown or steps["phase"].isna().any():
        raise RunDirError(f"{file}: column 'phase' must be one of {', '.join(rundir.PHASES)}; "
                          f"found {', '.join(unknown) or 'empty cells'}")
    if steps["step"].isna().any():
        raise RunDirError(f"{file}: column 'step' has empty cells")
    if steps["step"].duplicated().any():
        dup = int(steps.loc[steps["step"].duplicated(), "step"].iloc[0])
        raise RunDirError(f"{file}: step {dup} appears more than once")
