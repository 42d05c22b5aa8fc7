"""Load a run directory (see ``profiler.rundir``) into DataFrames, validating as it goes.

``load_run(path)`` returns a :class:`Run`: the parsed ``run.json`` and the
tables the report needs. Damaged input is refused or flagged, never used as data:

- refused (``RunDirError`` naming the file and the problem): unreadable JSON or CSV,
  missing keys or columns, a row with the wrong number of cells, a non-number in a
  numeric column, a ``schema_version`` newer than this code reads;
- flagged (a note in ``Run.warnings``): a last line cut mid-row (dropped: the writer
  appends whole rows, so only a stop mid-write leaves one), an older schema version,
  NaN / inf where a finite number is required (left out and counted in
  ``Run.nonfinite``), a non-finite loss not marked skipped (counted as skipped), and a
  ``running`` record whose writer is gone, which reads as ``killed``.

``allocations.csv`` is not loaded: the report works from the per-step and
per-category tables, which summarize it.
"""

from __future__ import annotations

import csv
import io
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from profiler import rundir
from profiler.errors import RunDirError

Progress = Callable[[str], None]

# run.json keys the report cannot do without; the others are read when present.
REQUIRED_RUN_KEYS = ("name", "status", "config", "device")
# Columns that must hold numbers (empty cells are allowed and read as NaN).
_TEXT_COLUMNS = {"phase", "view", "category", "name", "device", "op", "region", "role", "gpu"}
_NONFINITE_TEXT = {"nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
# A running record is stale (its writer presumed dead) when the lock cannot tell and its
# heartbeat is older than max(STALE_MIN_S, STALE_BEATS x the time between heartbeats).
STALE_MIN_S = 600.0
STALE_BEATS = 10


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
    nonfinite: int = 0  # NaN / inf cells where a finite number is required (left out)
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
    notes: list[str] = []
    meta = _read_meta(rundir.run_json_path(path), notes)
    counts: dict[str, int] = {}
    steps = _read_table(path / rundir.STEPS_CSV, rundir.STEPS_COLUMNS, say, notes, counts,
                        required=True, optional=rundir.OPTIONAL_STEPS_COLUMNS)
    assert steps is not None  # required=True raised otherwise
    steps = _check_steps(path / rundir.STEPS_CSV, steps, notes, counts)
    memory = _read_table(path / rundir.MEMORY_BY_CATEGORY_CSV, rundir.MEMORY_COLUMNS, say,
                         notes, counts)
    nvml = _read_table(path / rundir.NVML_CSV, rundir.NVML_COLUMNS, say, notes, counts)
    operators = _read_table(path / rundir.OPERATORS_CSV, rundir.OPERATOR_COLUMNS, say, notes,
                            counts)
    name = meta["name"]
    if meta["status"] == "running":
        meta = _running_or_killed(path, meta, len(steps), notes)
    elif meta["status"] != "complete":
        notes.append(f"run {name!s} has status {meta['status']!r}, not 'complete'"
                     + _error_suffix(meta))
    if not (steps["phase"] == "measured").any():
        notes.append(f"run {name!s} has no measured steps (only warm-up)")
    rank_steps, rank_operators = {0: steps}, {0: operators}
    for rank, folder in rundir.rank_dirs(path).items():
        if rank == 0:
            continue
        table = _read_table(folder / rundir.STEPS_CSV, rundir.STEPS_COLUMNS, say, notes,
                            counts, optional=rundir.OPTIONAL_STEPS_COLUMNS)
        if table is not None and not table.empty:
            rank_steps[rank] = _check_steps(folder / rundir.STEPS_CSV, table, notes, counts)
        rank_operators[rank] = _read_table(folder / rundir.OPERATORS_CSV,
                                           rundir.OPERATOR_COLUMNS, say, notes, counts)
    info = meta.get("distributed") or {}
    records = {int(r["rank"]): r for r in info.get("ranks") or [] if isinstance(r, dict)}
    if not records:
        records = {0: {"rank": 0, "host": meta.get("host"), "status": meta.get("status")}}
    world = int(info.get("world_size") or 1)
    absent = [r for r in range(world) if r not in rank_steps]
    if absent:
        notes.append(f"run {name!s}: no steps.csv for rank(s) "
                     f"{', '.join(map(str, absent))} (another node's files: python -m "
                     f"profiler merge)")
    if counts:
        detail = ", ".join(f"{k} {v}" for k, v in counts.items())
        notes.append(f"run {name!s}: {sum(counts.values())} NaN / inf value(s) where a finite "
                     f"number is required, left out of the statistics ({detail})")
    return Run(path=path, meta=meta, steps=steps, memory=memory, nvml=nvml,
               operators=operators, warnings=tuple(notes), nonfinite=sum(counts.values()),
               rank_steps=rank_steps, rank_operators=rank_operators, rank_records=records)


def _running_or_killed(path: Path, meta: dict[str, Any], rows: int,
                       notes: list[str]) -> dict[str, Any]:
    """A ``running`` record: still running, or ``killed`` (its writer is gone)."""
    raw = meta.get("heartbeat")
    beat: dict[str, Any] = raw if isinstance(raw, dict) else {}
    age = None
    if isinstance(beat.get("ts"), (int, float)):
        age = max(0.0, time.time() - float(beat["ts"]))
    held = rundir.lock_held(path)
    if held is None and beat.get("host") == socket.gethostname() and beat.get("pid"):
        held = rundir.pid_alive(int(beat["pid"]))
    if held is None and age is not None:
        held = age <= max(STALE_MIN_S, STALE_BEATS * float(beat.get("every_s") or 0))
    requested = meta.get("steps_requested")  # None: a user's loop, length unknown
    reached = f"{rows} of {requested} steps recorded" if requested else f"{rows} steps recorded"
    since = "" if age is None else f", last heartbeat {beat.get('at')} ({age:.0f} s ago)"
    if held:
        notes.append(f"run {meta['name']!s} is still running ({reached}{since}); "
                     f"comparing the steps recorded so far")
        return meta
    if held is None:
        notes.append(f"run {meta['name']!s} has status 'running' and no heartbeat to tell "
                     f"whether it is alive ({reached})")
        return meta
    interval = beat.get("interval_steps")
    lost = f"; at most {interval} steps after it are missing" if interval else ""
    notes.append(f"run {meta['name']!s} ended without finishing (killed): {reached}, the last "
                 f"step reached is {rows - 1}{since}{lost}")
    return {**meta, "status": rundir.KILLED, "recorded_status": "running"}


def _error_suffix(meta: dict[str, Any]) -> str:
    error = meta.get("error")
    if isinstance(error, dict) and error.get("message"):
        return f" ({error.get('type') or 'error'}: {error['message']})"
    return ""


def _read_meta(file: Path, notes: list[str]) -> dict[str, Any]:
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
    version = meta.get("schema_version")
    if version is None:
        notes.append(f"{file}: no schema_version (an older writer); read as version "
                     f"{rundir.SCHEMA_VERSION}, as far as it goes")
    elif not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise RunDirError(f"{file}: schema_version must be a whole number, got {version!r}")
    elif version > rundir.SCHEMA_VERSION:
        raise RunDirError(f"{file}: schema_version {version} is newer than this profiler "
                          f"reads (up to {rundir.SCHEMA_VERSION}); upgrade it to read this run")
    elif version < rundir.SCHEMA_VERSION:
        notes.append(f"{file}: schema_version {version} is older than this profiler's "
                     f"{rundir.SCHEMA_VERSION}; read what it can")
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


def _read_table(file: Path, columns: tuple[str, ...], say: Progress, notes: list[str],
                counts: dict[str, int], required: bool = False,
                optional: tuple[str, ...] = ()) -> pd.DataFrame | None:
    if not file.is_file():
        if required:
            raise RunDirError(f"{file}: missing")
        return None
    size = file.stat().st_size
    start = time.perf_counter()
    say(f"reading {file} ({size / 2**20:.1f} MiB)")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{file}: not UTF-8 text ({exc.reason})") from None
    if text and not text.endswith("\n"):
        cut = text.rfind("\n") + 1
        if cut == 0:
            raise RunDirError(f"{file}: cut inside its header line ({len(text)} bytes)")
        notes.append(f"{file}: last line cut mid-row ({len(text) - cut} bytes, the record of a "
                     f"stop during a write), dropped")
        text = text[:cut]
    if not text.strip():
        raise RunDirError(f"{file}: empty file (no header line)")
    _check_row_lengths(file, text)
    try:
        table = pd.read_csv(io.StringIO(text), low_memory=False, keep_default_na=False,
                            na_values=[""])
    except pd.errors.ParserError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RunDirError(f"{file}: not a readable CSV ({detail})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise RunDirError(f"{file}: missing column(s) {', '.join(missing)}")
    written: dict[str, np.ndarray] = {}
    for column in (*columns, *(c for c in optional if c in table.columns)):
        if column in _TEXT_COLUMNS:
            continue
        table[column], written[column] = _numeric(file, table[column], column)
        if column == "loss":
            continue  # a non-finite loss is data: the step was skipped (see below)
        bad = ~np.isfinite(table[column].to_numpy(dtype=np.float64)) & written[column]
        if bad.any():
            counts[f"{file.name}:{column}"] = int(bad.sum())
            table.loc[bad, column] = np.nan
    if "loss" in written and "skipped" in written:
        loss = table["loss"].to_numpy(dtype=np.float64)
        unmarked = written["loss"] & ~np.isfinite(loss) & (table["skipped"].fillna(0).to_numpy() != 1)
        if unmarked.any():
            notes.append(f"{file}: {int(unmarked.sum())} step(s) with a non-finite loss not "
                         f"marked skipped; counted as skipped")
            table.loc[unmarked, "skipped"] = 1
    say(f"read {file.name}: {len(table)} rows in {time.perf_counter() - start:.2f} s")
    return table


def _numeric(file: Path, values: pd.Series, column: str) -> tuple[pd.Series, np.ndarray]:
    """(float values, which cells held a value) of a numeric column. The spellings
    nan / inf / -inf give non-finite floats; any other non-number is refused."""
    written = values.notna().to_numpy()
    if values.dtype.kind in "biuf":
        return values, written
    numeric = pd.to_numeric(values, errors="coerce")
    spelled = values.astype("string").str.strip().str.lower().isin(_NONFINITE_TEXT)
    bad = numeric.isna().to_numpy() & written & ~spelled.fillna(False).to_numpy(dtype=bool)
    if bad.any():
        row = int(bad.nonzero()[0][0])
        raise RunDirError(f"{file}: column {column!r} holds a non-number "
                          f"{values.iloc[row]!r} at data row {row + 1}")
    return numeric.astype(np.float64), written


def _check_row_lengths(file: Path, text: str) -> None:
    """Every row has as many cells as the header (pandas would pad a short row with NaN)."""
    rows = csv.reader(io.StringIO(text), strict=True)
    try:
        width = len(next(rows))
        for number, row in enumerate(rows, start=1):
            if len(row) != width and row:
                raise RunDirError(f"{file}: data row {number} has {len(row)} cells, the "
                                  f"header has {width} (a damaged or hand-edited file)")
    except csv.Error as exc:
        raise RunDirError(f"{file}: not a readable CSV ({exc})") from None


def _check_steps(file: Path, steps: pd.DataFrame, notes: list[str],
                 counts: dict[str, int]) -> pd.DataFrame:
    if steps.empty:
        raise RunDirError(f"{file}: no steps recorded")
    phases = set(steps["phase"].dropna().unique())
    unknown = sorted(str(p) for p in phases - set(rundir.PHASES))
    if unknown or steps["phase"].isna().any():
        raise RunDirError(f"{file}: column 'phase' must be one of {', '.join(rundir.PHASES)}; "
                          f"found {', '.join(unknown) or 'empty cells'}")
    if steps["step"].isna().any():
        raise RunDirError(f"{file}: column 'step' has empty or non-finite cells")
    if steps["step"].duplicated().any():
        dup = int(steps.loc[steps["step"].duplicated(), "step"].iloc[0])
        raise RunDirError(f"{file}: step {dup} appears more than once")
    if f"{file.name}:wall_ms" in counts:
        # A step without a finite wall time was not measured: left out (and counted).
        steps = steps[steps["wall_ms"].notna()].reset_index(drop=True)
    if steps.empty:
        raise RunDirError(f"{file}: no step with a finite wall time")
    return steps
