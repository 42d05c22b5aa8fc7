"""One profile run: drive a workload step by step, measure, and leave a complete run directory.

Modes: ``bare`` (no instrumentation, no synchronization: the reference),
``light`` (device-synchronized phase times, allocator stats, RSS, NVML, scalars),
``full`` (light + a torch.profiler trace window with memory profiling).
Whatever happens (completion, SIGINT/SIGTERM, a crash, CUDA OOM), ``finish``
writes everything collected so far and a run.json with the status.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import torch

from profiler.analyze.memory import memory_growth, pool_rows
from profiler.collect.failure import failure_status
from profiler.collect.nvml import NvmlConfig, NvmlSampler
from profiler.collect.signals import StopRequested, StopSignals
from profiler.collect.stats import CudaSnapshot, StepMemory, sync
from profiler.collect.tracing import (
    TraceSchedule,
    TraceSession,
    merge_operators,
    window_tables,
)
from profiler.collect.workload import Workload
from profiler.collect.writer import RunWriter, device_info, git_revision, host, utc_now, versions
from profiler.render.scalars import ScalarWriter
from profiler.rundir import (
    ALLOCATION_COLUMNS,
    ALLOCATIONS_CSV,
    CUDA_SNAPSHOT,
    MEMORY_BY_CATEGORY_CSV,
    MEMORY_COLUMNS,
    NVML_COLUMNS,
    NVML_CSV,
    OPERATOR_COLUMNS,
    OPERATORS_CSV,
    STEPS_COLUMNS,
    STEPS_CSV,
)

MODES = ("bare", "light", "full")
# Environment variables that change speed or memory behaviour, recorded in run.json
# ("environment", an extension of RUN_JSON_KEYS). On CPU, oneDNN caches one primitive per
# new tensor shape (flow counts vary), which shows as slow allocator growth; capacity 0
# turns that cache off.
ENVIRONMENT_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ONEDNN_PRIMITIVE_CACHE_CAPACITY",
                    "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "CUBLAS_WORKSPACE_CONFIG")
# Extensions of STEPS_COLUMNS: end_ts = step end, seconds since the epoch; traced = 1 when
# torch.profiler was warming up or recording during the step (slower: kept out of the
# step-time statistics in run.json timings).
STEP_EXTRA_COLUMNS = ("end_ts", "traced")
CSV_FLUSH_S = 30.0  # least seconds between in-loop rewrites of steps.csv


class StepLog:
    """Step rows kept as small tuples: a long run's bookkeeping stays out of the C heap
    that ``allocated_bytes`` measures on CPU. Indexing and iteration give dicts."""

    COLUMNS = (*STEPS_COLUMNS, *STEP_EXTRA_COLUMNS, "instrumented")

    def __init__(self) -> None:
        self._rows: list[tuple] = []

    def append(self, row: dict[str, Any]) -> None:
        self._rows.append(tuple(row.get(c) for c in self.COLUMNS))

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [dict(zip(self.COLUMNS, r, strict=True)) for r in self._rows[index]]
        return dict(zip(self.COLUMNS, self._rows[index], strict=True))

    def __iter__(self):
        return (dict(zip(self.COLUMNS, r, strict=True)) for r in self._rows)

    def frame(self, columns: tuple[str, ...]) -> pd.DataFrame:
        return pd.DataFrame.from_records(self._rows, columns=list(self.COLUMNS))[list(columns)]


@dataclass(frozen=True)
class ProfileOptions:
    run_dir: Path
    name: str
    preset: str
    variant: str
    pool: str
    mode: str
    steps: int
    warmup: int
    monitor_interval: int
    overrides: dict[str, Any]
    nvml: NvmlConfig
    trace: TraceSchedule
    overwrite: bool = False
    measure_overhead: bool = False
    command: tuple[str, ...] = ()
    tolerance_bytes: int | None = None  # attribution check; None = 0 on CPU, 1 MiB on CUDA


class ProfileSession:
    def __init__(self, options: ProfileOptions, config: Any, device: torch.device,
                 make_workload: Callable[[Any, torch.device, str], Workload],
                 log: TextIO = sys.stderr) -> None:
        self.o = options
        self.config = config
        self.device = device
        self.make_workload = make_workload
        self.log = log
        self.writer = RunWriter(options.run_dir)
        self.rows = StepLog()
        self.pool_rows: list[dict[str, Any]] = []
        self.memory = StepMemory(device)
        self.nvml = NvmlSampler(options.nvml, device)
        self.scalars = ScalarWriter(options.run_dir)
        self.snapshot = CudaSnapshot(device, path=str(options.run_dir / CUDA_SNAPSHOT))
        self.trace: TraceSession | None = None
        self.workload: Workload | None = None
        self._scalar_rows = 0
        self._csv_written = time.monotonic()
        self._window_rows: list[dict[str, Any]] = []
        self._stop = StopSignals()

    # --- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from energy_flow.runtime import resolve_device

        o = self.o
        resolve_device(self.device)  # ConfigError before anything is written
        self.writer.create(o.overwrite)
        self.writer.update(
            name=o.name, status="running", command=list(o.command), config={
                "preset": o.preset, "overrides": o.overrides, "variant": o.variant,
                "pool": o.pool, "mode": o.mode, "model": self.config.to_dict()},
            seeds={"model": self.config.seed, "data": self.config.seed, "torch": self.config.seed},
            versions=versions(), device={**device_info(self.device),
                                         "allocator_stats": self.memory.source}, host=host(),
            git_revision=git_revision(Path(__file__).resolve().parents[2]),
            started_at=utc_now(), steps_requested=o.steps, steps_completed=0,
            warmup_steps=min(o.warmup, o.steps), trace=None, attribution=None,
            nvml={"available": False, "reason": "NVML unavailable: not sampled in bare mode",
                  "interval_s": o.nvml.interval_s},
            timings={}, memory_growth=None,
            environment={k: os.environ.get(k) for k in ENVIRONMENT_KEYS if k in os.environ})
        self.writer.write_run()
        t_start = time.perf_counter()
        status, error, at_failure = "complete", None, None
        try:
            with self._stop:
                self._loop()
        except (StopRequested, KeyboardInterrupt) as exc:
            status = "interrupted"
            error = {"type": type(exc).__name__, "message": str(exc) or "KeyboardInterrupt"}
        except Exception as exc:  # CUDA, cuBLAS, cuDNN, driver and CPU OOMs give "oom"
            status, error = failure_status(exc), {"type": type(exc).__name__,
                                                  "message": str(exc)}
            at_failure = self._failure_state()
        return self._finish(status, error, at_failure, time.perf_counter() - t_start)

    def _loop(self) -> None:
        o = self.o
        torch.manual_seed(self.config.seed)
        t0 = time.perf_counter()
        self.workload = self.make_workload(self.config, self.device, o.pool)
        self.writer.meta["timings"]["setup_s"] = round(time.perf_counter() - t0, 3)
        if o.mode != "bare":
            status = self.nvml.start()
            self.writer.update(nvml=status.to_json(o.nvml.interval_s))
            self.writer.meta["versions"].update(driver=status.driver, nvml=status.nvml_version)
        if o.mode == "full":
            self.trace = TraceSession(o.run_dir, o.trace, self.device)
        self.writer.update(trace={"schedule": o.trace.to_json(), "files": []}
                           if o.mode == "full" else None)
        self.writer.write_run()
        with self.trace if self.trace is not None else contextlib.nullcontext():
            for i in range(o.steps):
                self._stop.check()
                bare = o.mode == "bare" or (o.measure_overhead and (i % 2) == ((i // 2) % 2))
                traced = self.trace is not None and self.trace.recording
                if o.mode != "bare":  # memory history only in the trace window (or guard)
                    self.snapshot.window(traced)
                self.rows.append({**self._step(i, bare), "traced": int(traced)})
                if self.trace is not None:
                    self.trace.step()
                if o.mode != "bare" and o.pool != "off":
                    self.pool_rows.extend(pool_rows(i, self.workload.pool_stats()))
                if (i + 1) % o.monitor_interval == 0 or i + 1 == o.steps:
                    self._monitor(i)

    def _step(self, i: int, bare: bool) -> dict[str, Any]:
        phase = "warmup" if i < self.o.warmup else "measured"
        if bare:
            t0 = time.perf_counter()
            result = self.workload.step(i, None)
            t1 = time.perf_counter()
            return {**result, "step": i, "phase": phase, "wall_ms": (t1 - t0) * 1e3,
                    "end_ts": time.time(), "instrumented": 0}
        marks: dict[str, float] = {}

        def on_phase(name: str) -> None:
            sync(self.device)
            marks[name] = time.perf_counter()
            if self.trace is not None and self.trace.recording:
                self.trace.mark_phase(name, i, self.workload.role_tensors())
            self._stop.check()

        self.memory.begin_step()
        sync(self.device)
        t0 = time.perf_counter()
        result = self.workload.step(i, on_phase)
        sync(self.device)
        t1 = time.perf_counter()
        f, b, p = (marks.get(k) for k in ("forward", "backward", "optimizer"))
        row = {**result, "step": i, "phase": phase, "wall_ms": (t1 - t0) * 1e3,
               "forward_ms": None if f is None else (f - t0) * 1e3,
               "backward_ms": None if b is None or f is None else (b - f) * 1e3,
               "optimizer_ms": None if p is None or b is None else (p - b) * 1e3,
               "end_ts": time.time(), "instrumented": 1}
        row.update(self.memory.read())
        self.snapshot.guard(i, row["peak_bytes"], row["reserved_bytes"])
        return row

    def _monitor(self, i: int) -> None:
        row = self.rows[-1]
        rss = row.get("rss_bytes")
        mem = f" rss {rss / 2**20:.0f} MiB" if rss else ""
        if row.get("allocated_bytes") is not None:
            mem += f" allocated {row['allocated_bytes'] / 2**20:.1f} MiB"
        print(f"step {i + 1}/{self.o.steps} wall {row['wall_ms']:.1f} ms "
              f"loss {row['loss']:.5g}{mem}", file=self.log, flush=True)
        # Every exit path rewrites steps.csv in full (_finish); in the loop, a rewrite (whose
        # cost grows with the run) at most every CSV_FLUSH_S, so only a SIGKILL loses rows.
        now = time.monotonic()
        self._flush_steps(csv=now - self._csv_written >= CSV_FLUSH_S)

    def _flush_steps(self, csv: bool = True) -> None:
        if csv:
            columns = STEPS_COLUMNS + STEP_EXTRA_COLUMNS
            if self.o.measure_overhead:
                columns = columns + ("instrumented",)
            self.writer.write_csv(STEPS_CSV, self.rows.frame(columns), columns)
            self._csv_written = time.monotonic()
        if self.o.mode != "bare":
            self.scalars.steps(self.rows[self._scalar_rows:])
            self._scalar_rows = len(self.rows)

    def _failure_state(self) -> dict[str, Any] | None:
        try:
            state = self.memory.at_failure()
            if self.snapshot.dump(str(self.o.run_dir / CUDA_SNAPSHOT)):
                state["snapshot"] = CUDA_SNAPSHOT
                state["snapshot_python_stacks"] = self.snapshot.recording
            return state
        except Exception as exc:  # the device may be unusable after the failure
            return {"error": f"{type(exc).__name__}: {exc}"}

    # --- finishing: always runs, writes whatever was collected -----------------------------
    def _finish(self, status: str, error: dict | None, at_failure: dict | None,
                elapsed_s: float) -> dict[str, Any]:
        problems: list[str] = []

        def attempt(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception as exc:
                problems.append(f"{what}: {type(exc).__name__}: {exc}")

        attempt("nvml", self._finish_nvml)
        attempt("steps", self._flush_steps)
        if self.trace is not None:
            attempt("trace", self._finish_trace)
        if self.o.mode == "full" and status == "complete" and not self.snapshot.dumped_with_stacks:
            attempt("snapshot", lambda: self.snapshot.dump(str(self.o.run_dir / CUDA_SNAPSHOT)))
        attempt("snapshot-stop", self.snapshot.stop)
        if self.snapshot.active:
            self.writer.update(memory_history=self.snapshot.to_json())
        if self._window_rows or self.pool_rows:
            attempt("categories", self._finish_categories)
        attempt("scalars", self.scalars.close)
        self._summarize(elapsed_s)
        self.writer.update(status=status, error=error, ended_at=utc_now(),
                           steps_completed=len(self.rows))
        if at_failure is not None:
            self.writer.update(memory_at_failure=at_failure)
        if problems:
            self.writer.update(finalize_errors=problems)
        self.writer.write_run()
        return self.writer.meta

    def _finish_nvml(self) -> None:
        status = self.nvml.stop()
        if self.nvml.owner is not None:  # it was sampled: record what actually was
            self.writer.update(nvml=status.to_json(self.o.nvml.interval_s))
        rows = self.nvml.rows()
        if rows:
            self.writer.write_csv(NVML_CSV, rows, NVML_COLUMNS)
            self.scalars.nvml(rows)

    def _finish_categories(self) -> None:
        rows = self._window_rows + self.pool_rows
        self.writer.write_csv(MEMORY_BY_CATEGORY_CSV, rows, MEMORY_COLUMNS)
        self.scalars.categories(rows)

    def _finish_trace(self) -> None:
        tr = self.trace
        paths = [self.o.run_dir / f for f in tr.files]
        self.writer.meta["trace"]["files"] = list(tr.files)
        t0 = time.perf_counter()
        tolerance = self.o.tolerance_bytes
        if tolerance is None:
            tolerance = 0 if self.device.type == "cpu" else 1 << 20
        tables = window_tables(paths, tr.probes, self.device, tolerance)
        self.writer.write_csv(ALLOCATIONS_CSV, tables.allocations, ALLOCATION_COLUMNS)
        self._window_rows = tables.memory_by_category.to_dict("records")
        self.writer.write_csv(OPERATORS_CSV, merge_operators(tr.operators), OPERATOR_COLUMNS)
        check = dict(tables.attribution)
        check["view"] = "region"
        self.writer.update(attribution=check)
        self.writer.meta["timings"]["trace_postprocess_s"] = round(time.perf_counter() - t0, 3)

    def _summarize(self, elapsed_s: float) -> None:
        timings = self.writer.meta["timings"]
        timings["total_s"] = round(elapsed_s, 3)
        # With --measure-overhead every other step is bare: statistics use the instrumented ones.
        measured = [r for r in self.rows if r["phase"] == "measured" and not r["traced"]
                     and (r["instrumented"] or not self.o.measure_overhead)]
        traced = [r["wall_ms"] for r in self.rows if r["phase"] == "measured" and r["traced"]]
        if traced:
            timings["traced_step_ms_median"] = statistics.median(traced)
        if measured:
            walls = [r["wall_ms"] for r in measured]
            samples = sum(r.get("samples") or 0 for r in measured)
            timings["step_ms_median"] = statistics.median(walls)
            timings["step_ms_mean"] = statistics.fmean(walls)
            timings["samples_per_s"] = samples * 1000.0 / sum(walls) if sum(walls) else None
        if self.o.measure_overhead:
            timings["overhead"] = paired_overhead(list(self.rows))
        if len(self.rows):
            steps = self.rows.frame((*STEPS_COLUMNS, "instrumented"))
            if self.o.measure_overhead:
                steps = steps[steps["instrumented"] == 1]
            self.writer.update(memory_growth=memory_growth(steps))


def paired_overhead(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Light vs bare: median over step pairs (2k, 2k+1) of (light - bare) / bare, measured steps."""
    by_step = {r["step"]: r for r in rows if r["phase"] == "measured"}
    diffs, bare, light = [], [], []
    for s, r in by_step.items():
        if s % 2 or (s + 1) not in by_step:
            continue
        a, b = r, by_step[s + 1]
        lo, hi = (a, b) if a["instrumented"] == 0 else (b, a)
        if lo["instrumented"] != 0 or hi["instrumented"] != 1:
            continue
        bare.append(lo["wall_ms"])
        light.append(hi["wall_ms"])
        diffs.append((hi["wall_ms"] - lo["wall_ms"]) / lo["wall_ms"])
    if not diffs:
        return {"pairs": 0}
    return {"pairs": len(diffs), "bare_ms_median": statistics.median(bare),
            "light_ms_median": statistics.median(light),
            "overhead_pct_paired_median": 100.0 * statistics.median(diffs)}
