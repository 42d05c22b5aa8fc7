"""Synthetic run directories (written through the run-directory contract) and the loader's
validation. ``write_run`` is imported by the other report tests and the report benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler import rundir
from profiler.errors import RunDirError
from profiler.parse.run import load_run

REGIONS = ("mapper", "flow_init", "neuron", "carrier", "collect", "loss", "backward", "other")


def write_run(path: Path, *, name: str | None = None, steps: int = 40, warmup: int = 5,
              wall_ms: float = 20.0, jitter: float = 0.02, carrier_scale: float = 1.0,
              seed: int = 0, status: str = "complete", preset: str = "debug",
              device: str = "cpu", lattice: tuple[int, int, int] = (4, 4, 4),
              nvml: bool = False, pool: bool = False, growth_per_step: int = 0,
              batch_size: int = 2) -> Path:
    """A complete run directory whose numbers are known: step times wall_ms * (1 + noise),
    region memory fixed per region (carrier scaled by ``carrier_scale``)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    n = np.arange(steps)
    wall = wall_ms * (1 + jitter * rng.standard_normal(steps))
    allocated = 1_000_000 + growth_per_step * n
    steps_df = pd.DataFrame({
        "step": n, "phase": np.where(n < warmup, "warmup", "measured"), "wall_ms": wall,
        "forward_ms": wall * 0.5, "backward_ms": wall * 0.3, "optimizer_ms": wall * 0.1,
        "loss": 1.0 / (n + 1), "skipped": 0, "samples": batch_size, "flows_created": 40,
        "flows_live_peak": 32, "flows_completed": 30, "steps_taken": 2, "flow_steps": 64,
        "allocated_bytes": allocated, "reserved_bytes": allocated + 4096,
        "peak_bytes": allocated + int(500_000 * carrier_scale), "rss_bytes": 200_000_000 + n,
    })
    rundir.atomic_write_text(path / rundir.STEPS_CSV, steps_df.to_csv(index=False))
    rows = []
    for s in n:
        for i, region in enumerate(REGIONS):
            peak = (i + 1) * 100_000 * (carrier_scale if region == "carrier" else 1.0)
            rows.append({"step": s, "view": "region", "category": region,
                         "live_bytes": peak // 2, "peak_bytes": peak, "alloc_count": i + 1,
                         "alloc_bytes": peak, "free_count": i + 1, "free_bytes": peak})
        for j, role in enumerate(("parameter", "activation", "temporary")):
            rows.append({"step": s, "view": "role", "category": role, "live_bytes": 1000 * j,
                         "peak_bytes": 2000 * (j + 1), "alloc_count": j, "alloc_bytes": 100 * j,
                         "free_count": j, "free_bytes": 100 * j})
        if pool:
            rows.append({"step": s, "view": "pool", "category": "scratch", "live_bytes": 0,
                         "peak_bytes": 4096, "alloc_count": 4, "alloc_bytes": 4096,
                         "free_count": 4, "pool_hits": 3, "pool_misses": 1})
    memory = pd.DataFrame(rows).reindex(columns=list(rundir.MEMORY_COLUMNS))
    rundir.atomic_write_text(path / rundir.MEMORY_BY_CATEGORY_CSV, memory.to_csv(index=False))
    ops = pd.DataFrame({"name": ["aten::mm", "aten::gru", "aten::add"],
                        "count": [30, 10, 50],
                        "self_us": [3000.0, 9000.0 * carrier_scale, 500.0],
                        "total_us": [3500.0, 12000.0 * carrier_scale, 600.0],
                        "self_device_us": [0.0, 0.0, 0.0], "total_device_us": [0.0, 0.0, 0.0]})
    rundir.atomic_write_text(path / rundir.OPERATORS_CSV, ops.to_csv(index=False))
    if nvml:
        k = np.arange(20)
        nv = pd.DataFrame({"ts": 1e9 + k, "gpu": 0, "used_bytes": 3e9 + 1e6 * k,
                           "total_bytes": 80e9, "process_bytes": 2e9, "util_gpu_pct": 50,
                           "util_mem_pct": 20, "power_w": 200.0, "temperature_c": 50,
                           "torch_allocated_bytes": 1e9, "torch_cache_bytes": 1e9,
                           "non_torch_bytes": 1e9 + 1e6 * k, "lost": 0})
        rundir.atomic_write_text(path / rundir.NVML_CSV, nv.to_csv(index=False))
    width, height, depth = lattice
    meta = {
        "schema_version": rundir.SCHEMA_VERSION, "name": name or path.name, "status": status,
        "error": None, "command": ["python", "-m", "profiler", "profile"],
        "config": {"preset": preset, "overrides": {}, "variant": "after", "pool": "off",
                   "mode": "full", "model": {"preset": preset, "lattice_width": width,
                                             "lattice_height": height, "lattice_depth": depth,
                                             "batch_size": batch_size}},
        "seeds": {"model": 0, "data": 1},
        "versions": {"python": "3.x", "torch": "2.x", "cuda": None},
        "device": {"type": device, "name": device, "total_memory_bytes": None},
        "host": "host", "git_revision": "abc", "started_at": "t0", "ended_at": "t1",
        "steps_requested": steps, "steps_completed": steps, "warmup_steps": warmup,
        "nvml": {"available": nvml, "reason": None if nvml else "no NVIDIA GPU"},
        "trace": {"schedule": {"wait": 1, "warmup": 1, "active": 2, "repeat": 1}},
        "attribution": None,
    }
    rundir.write_json(path / rundir.RUN_JSON, meta)
    return path


def test_load_run_reads_every_table(tmp_path):
    run = load_run(write_run(tmp_path / "a", steps=12, warmup=2, nvml=True))
    assert run.name == "a" and run.status == "complete" and run.warnings == ()
    assert len(run.steps) == 12 and len(run.measured) == 10
    assert len(run.memory) == 12 * (len(REGIONS) + 3)
    assert len(run.nvml) == 20 and list(run.operators["name"]) == ["aten::mm", "aten::gru",
                                                                   "aten::add"]


def test_incomplete_run_is_loaded_with_a_warning(tmp_path):
    run = load_run(write_run(tmp_path / "a", steps=8, status="oom"))
    assert run.warnings == ("run a has status 'oom', not 'complete'",)


def test_optional_tables_may_be_absent(tmp_path):
    path = write_run(tmp_path / "a", steps=8)
    (path / rundir.OPERATORS_CSV).unlink()
    (path / rundir.MEMORY_BY_CATEGORY_CSV).unlink()
    run = load_run(path)
    assert run.operators is None and run.memory is None and run.nvml is None


def test_progress_names_each_file(tmp_path):
    lines: list[str] = []
    load_run(write_run(tmp_path / "a", steps=8), lines.append)
    reads = [line for line in lines if line.startswith("reading ")]
    assert [Path(line.split()[1]).name for line in reads] == [
        rundir.STEPS_CSV, rundir.MEMORY_BY_CATEGORY_CSV, rundir.OPERATORS_CSV]


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "run.json").unlink(), r"run\.json: missing"),
    (lambda p: (p / "run.json").write_text("{not json"), r"run\.json: not valid JSON"),
    (lambda p: (p / "run.json").write_text("[1]"), r"run\.json: expected a JSON object"),
    (lambda p: _edit_meta(p, status="weird"), r"run\.json: unknown status 'weird'"),
    (lambda p: _edit_meta(p, drop="config"), r"run\.json: missing key\(s\) config"),
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
def test_damaged_run_names_file_and_problem(tmp_path, damage, message):
    path = write_run(tmp_path / "a", steps=8)
    damage(path)
    with pytest.raises(RunDirError, match=message):
        load_run(path)


def test_missing_directory(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        load_run(tmp_path / "nope")


def _edit_meta(path: Path, status: str | None = None, drop: str | None = None) -> None:
    meta = json.loads((path / "run.json").read_text())
    if status is not None:
        meta["status"] = status
    if drop is not None:
        del meta[drop]
    (path / "run.json").write_text(json.dumps(meta))


def _edit_csv(file: Path, drop: str | None = None, set_: tuple | None = None) -> None:
    table = pd.read_csv(file)
    if drop is not None:
        table = table.drop(columns=[drop])
    if set_ is not None:
        column, row, value = set_
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
    table.to_csv(file, index=False)
