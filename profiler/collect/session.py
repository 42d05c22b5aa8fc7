"""One profile run: drive a workload step by step, measure, and write what was collected.

Collection only: the raw files (steps.csv, nvml.csv, traces, a CUDA memory snapshot) and
run.json with the status. The profile facade (``profiler.profiling``) then post-processes
them (parse -> analyze -> render: window tables, summaries, TensorBoard scalars).

Modes: ``bare`` (no instrumentation, no synchronization: the reference),
``light`` (device-synchronized phase times, allocator stats, RSS, NVML, scalars),
``full`` (light + a torch.profiler trace window with memory profiling).
Whatever happens (completion, SIGINT/SIGTERM, a crash, CUDA OOM, a full disk),
``end`` writes everything collected so far and a run.json with the status.

The record survives a stop the process never sees (SIGKILL, a lost node): every
``monitor_interval`` steps the new steps.csv rows are appended and fsynced and
run.json gets a heartbeat (steps completed, time, pid, host), so at most the steps
since the last heartbeat are missing, and a reader can tell a dead run from a live one.
The run name is locked (``rundir.lock_path``) from ``begin`` to ``close``; an
``--overwrite`` run is staged beside the old one and moves into place at its first
heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import torch

from profiler.collect.distributed import CommTimer, RankInfo
from profiler.collect.failure import failure_status
from profiler.collect.hostload import HostLoad, cpu_model
from profiler.collect.modules import ModuleScopes
from profiler.collect.nvml import NvmlConfig, NvmlSampler
from profiler.collect.progress import StepProgress
from profiler.collect.signals import StopRequested, StopSignals
from profiler.collect.stats import CudaSnapshot, StepMemory, sync, trim_heap
from profiler.collect.tracing import TraceSchedule, TraceSession
from profiler.collect.workload import Workload, role_tensors_of
from profiler.collect.writer import (
    BackgroundRecord,
    RowAppender,
    RunWriter,
    device_info,
    git_revision,
    host,
    no_space,
    utc_now,
    versions,
)
from profiler.errors import DiskFullError
from profiler.rundir import (
    COLLECTOR_STEPS_COLUMNS,
    COMM_STEPS_COLUMNS,
    CUDA_SNAPSHOT,
    NVML_COLUMNS,
    NVML_CSV,
    OPTIONAL_STEPS_COLUMNS,
    RANK_COLUMN,
    RUN_JSON,
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
# end_ts, cpu_ms, traced, alloc_count, alloc_bytes, heap_bytes (instrumented: overhead runs only);
# see profiler.rundir.COLLECTOR_STEPS_COLUMNS and profiler.collect.stats.StepMemory
STEP_EXTRA_COLUMNS = COLLECTOR_STEPS_COLUMNS[:-1]


class StepLog:
    """Step rows kept as small tuples: a long run's bookkeeping keeps the C heap
    (``heap_bytes``) small. Indexing and iteration give dicts.

    Fields outside ``COLUMNS`` (a workload's own step columns) are kept too, in the order
    they first appear; ``extra_columns`` lists them."""

    COLUMNS = (*STEPS_COLUMNS, *OPTIONAL_STEPS_COLUMNS, *STEP_EXTRA_COLUMNS, "instrumented",
               RANK_COLUMN, *COMM_STEPS_COLUMNS)

    def __init__(self) -> None:
        self._rows: list[tuple] = []
        self._known = set(self.COLUMNS)  # the contract's columns and the extra ones so far
        self.extra_columns: list[str] = []
        self._reported: set[str] = set()

    def append(self, row: dict[str, Any]) -> None:
        # set operations and map() keep the per-step cost (in a user's loop) small
        new = row.keys() - self._known
        if new:
            for key in row:  # in the order they first appear
                if key in new:
                    self.extra_columns.append(key)
            self._known.update(new)
        for key in row.keys() - self._reported:
            if row[key] is not None:
                self._reported.add(key)
        base = tuple(map(row.get, self.COLUMNS))
        if self.extra_columns:
            base += tuple(map(row.get, self.extra_columns))
        self._rows.append(base)

    def reported(self, column: str) -> bool:
        """True when some row holds a value for ``column``."""
        return column in self._reported

    @property
    def _names(self) -> list[str]:
        return [*self.COLUMNS, *self.extra_columns]

    def _dict(self, r: tuple) -> dict[str, Any]:
        return dict(zip(self._names, r + (None,) * (len(self._names) - len(r)), strict=True))

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._dict(r) for r in self._rows[index]]
        return self._dict(self._rows[index])

    def __iter__(self):
        return (self._dict(r) for r in self._rows)

    def frame(self, columns: tuple[str, ...] | list[str]) -> pd.DataFrame:
        names = self._names
        rows = [r + (None,) * (len(names) - len(r)) for r in self._rows]
        return pd.DataFrame.from_records(rows, columns=names)[list(columns)]

    def values(self, start: int, columns: list[str] | tuple[str, ...]) -> list[tuple]:
        """The rows from ``start`` on as tuples of ``columns``' values (None where a row has
        no value): what steps.csv appends, without a dict per row."""
        names = self._names
        where = {name: i for i, name in enumerate(names)}
        picks = [where.get(c, len(names)) for c in columns]  # len(names): always None
        pad = (None,) * (len(names) + 1)
        return [tuple(map((r + pad).__getitem__, picks)) for r in self._rows[start:]]

    def csv_columns(self, with_instrumented: bool) -> list[str]:
        """steps.csv columns: the contract's, the optional ones some row reported, the
        collector's, then the workload's own."""
        optional = [c for c in OPTIONAL_STEPS_COLUMNS if c in self._reported]
        extra = ["instrumented"] if with_instrumented else []
        comm = [c for c in COMM_STEPS_COLUMNS if c in self._reported]
        return [*STEPS_COLUMNS, *optional, *STEP_EXTRA_COLUMNS, *extra, RANK_COLUMN, *comm,
                *self.extra_columns]


@dataclass(frozen=True)
class ProfileOptions:
    run_dir: Path
    name: str
    preset: str | None  # None: not the energy_flow workload
    variant: str | None
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
    workload: str = "energy_flow"  # what was profiled: energy_flow, module:factory, a script
    module_depth: int | None = None  # per-module attribution depth; None = automatic
    rank: RankInfo | None = None  # torch.distributed rank (None: one process)
    trace_dir: Path | None = None  # where traces go (a multi-rank run's root); None = run_dir

    @property
    def traces_in(self) -> Path:
        return self.trace_dir if self.trace_dir is not None else self.run_dir

    @property
    def rank_index(self) -> int:
        return self.rank.rank if self.rank is not None else 0


class ProfileSession:
    def __init__(self, options: ProfileOptions, config: Any, device: torch.device,
                 make_workload: Callable[[Any, torch.device, str], Workload] | None,
                 log: TextIO | None = sys.stderr) -> None:
        self.o = options
        self.config = config
        self.device = device
        self.make_workload = make_workload
        self.log = log
        self.writer = RunWriter(options.run_dir)
        self.rows = StepLog()
        self.pool_log: list[tuple[int, dict[str, dict[str, int]]]] = []  # (step, pool_stats())
        self.memory = StepMemory(device, count_tensors=options.mode != "bare",
                                 process_every=options.monitor_interval)
        self.host_load = HostLoad()
        self.nvml = NvmlSampler(options.nvml, device)
        self.snapshot = CudaSnapshot(device, path=str(options.run_dir / CUDA_SNAPSHOT))
        self.trace: TraceSession | None = None
        self.workload: Any = None  # a Workload: step() plus optional members
        self.modules: ModuleScopes | None = None
        self.comm: CommTimer | None = None
        self.span_base: int | None = None  # multi-rank: the traces' shared name stamp
        self.steps_file: RowAppender | None = None  # created at the first heartbeat
        self.progress: StepProgress | None = None
        self._appended = 0  # rows handed to steps_file
        self._record_s = 0.0  # time spent writing heartbeats (steps.csv rows + run.json)
        self._heartbeats = 0
        self._last_beat: float | None = None
        self._record: BackgroundRecord | None = None
        self._stop = StopSignals()
        self.signals_at_end = 0  # signals received before end(): they ended the steps
        self.disk_full: list[str] = []  # "no space left on <path>" of what end() could not write

    # --- the run ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Drive ``make_workload``'s workload for ``options.steps`` steps; the run's metadata."""
        with self._stop:  # re-entrant: the profile facade holds it through post-processing
            self.begin()
            t_start = time.perf_counter()
            try:
                try:
                    self._loop()
                finally:
                    self.stop_progress()
            except BaseException as exc:
                status, error, at_failure = self.failure(exc)
                if status is None:
                    self.close()
                    raise
                return self.end(status, error, at_failure, time.perf_counter() - t_start)
            return self.end("complete", None, None, time.perf_counter() - t_start)

    def begin(self) -> None:
        """Lock the run name, create the run directory (staged beside an old run with
        ``overwrite``) and write run.json with status ``running``. Raises ``ConfigError``
        (a device that does not exist), ``RunDirError`` (the name is taken or in use, the
        directory cannot be made) or ``DiskFullError`` (not even the first run.json fits)
        before any step; after that, every outcome is a status in the record."""
        from energy_flow.runtime import resolve_device

        o = self.o
        resolve_device(self.device)  # ConfigError before anything is written
        import torch.distributed as dist

        ordered = o.rank is not None and o.rank.distributed and dist.is_initialized()
        if ordered and o.rank_index > 0:
            dist.barrier()  # rank 0 has created (or replaced) the run directory, with a record
        self.writer.create(o.overwrite)
        try:
            self._begin()
        except BaseException:
            self.close()
            raise
        self.progress = None if self.log is None else StepProgress(
            o.steps, self.log, every_steps=o.monitor_interval)

    def close(self) -> None:
        """Release the run name (after post-processing: the lock covers the whole run)."""
        self.writer.close()

    def stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def _begin(self) -> None:
        o = self.o
        import torch.distributed as dist

        ordered = o.rank is not None and o.rank.distributed and dist.is_initialized()
        self.snapshot.path = str(self.writer.run_dir / CUDA_SNAPSHOT)  # staged until committed
        config = {"preset": o.preset, "overrides": o.overrides, "variant": o.variant,
                  "pool": o.pool, "mode": o.mode, "workload": o.workload,
                  "model": self.config.to_dict() if hasattr(self.config, "to_dict")
                  else self.config}
        seed = getattr(self.config, "seed", None)
        self.writer.update(
            name=o.name, status="running", command=list(o.command), config=config,
            seeds={"model": seed, "data": seed, "torch": seed},
            versions=versions(), device={**device_info(self.device),
                                         "allocator_stats": self.memory.source,
                                         **self._device_extras()}, host=host(),
            git_revision=git_revision(Path(__file__).resolve().parents[2]),
            started_at=utc_now(), steps_requested=o.steps or None, steps_completed=0,
            warmup_steps=min(o.warmup, o.steps) if o.steps else o.warmup, trace=None,
            attribution=None,
            nvml={"available": False, "reason": "NVML unavailable: not sampled in bare mode",
                  "interval_s": o.nvml.interval_s},
            timings={}, memory_growth=None,
            environment={k: os.environ.get(k) for k in ENVIRONMENT_KEYS if k in os.environ},
            distributed=o.rank.to_json(self.device) if o.rank is not None else None)
        self._beat("steps")
        try:
            self.writer.write_run()
        except BaseException:
            # Not even the first record fits: leave nothing behind (an old run stays whole).
            if self.writer.staged:
                self.writer.discard()
            else:
                with contextlib.suppress(OSError):
                    for f in self.writer.run_dir.iterdir():
                        f.unlink()
                    self.writer.run_dir.rmdir()
            raise
        if ordered:
            if o.rank_index == 0:
                # with --overwrite the new root moves into place now that it has a record,
                # before the other ranks (waiting at the barrier) make their folders in it
                self.commit()
                dist.barrier()
            from profiler.collect.distributed import broadcast

            # one trace name per window for every rank (TensorBoard's span)
            self.span_base = int(broadcast(time.time_ns() // 1000))
        self.host_load.begin()

    def failure(self, exc: BaseException) -> tuple[str | None, dict | None, dict | None]:
        """(status, error, memory state) for an exception that ended the steps; status None
        for one that is not the run's to record (SystemExit, GeneratorExit)."""
        error = {"type": type(exc).__name__, "message": str(exc)}
        if (self._stop.signame is not None and isinstance(exc, Exception)
                and not isinstance(exc, StopRequested)):
            # stopped by a signal: a collective that failed meanwhile (a peer that
            # stopped first) does not make this rank failed
            error = {"type": "StopRequested", "message": f"stopped by {self._stop.signame} "
                     f"({type(exc).__name__}: {exc})"}
            return "interrupted", error, None
        if isinstance(exc, (StopRequested, KeyboardInterrupt)):
            error["message"] = str(exc) or "KeyboardInterrupt"
            return "interrupted", error, None
        if isinstance(exc, Exception):  # CUDA, cuBLAS, cuDNN, driver and CPU OOMs give "oom"
            return failure_status(exc), self.error(exc), self._failure_state()
        return None, None, None

    def error(self, exc: BaseException) -> dict[str, str]:
        """run.json ``error`` of a failure; a full disk reads "no space left on <path>"."""
        if isinstance(exc, DiskFullError):
            return {"type": "DiskFull", "message": str(exc)}
        if isinstance(exc, OSError) and no_space(exc):
            return {"type": "DiskFull",
                    "message": f"no space left on {exc.filename or self.writer.run_dir}"}
        if "No space left on device" in str(exc):  # raised through torch's C++ writers
            return {"type": "DiskFull", "message": f"no space left on {self.writer.run_dir}"}
        return {"type": type(exc).__name__, "message": str(exc)}

    def say(self, message: str) -> None:
        """A line for the user (above the progress bar on a terminal); nothing when silent."""
        if self.progress is not None:
            self.progress.say(message)
        elif self.log is not None:
            print(message, file=self.log, flush=True)

    def start_collectors(self, workload: Any) -> None:
        """NVML sampler and (full mode) the trace session, for ``workload``; before step 0."""
        o = self.o
        self.workload = workload
        if o.mode != "bare":
            status = self.nvml.start()
            self.writer.update(nvml=status.to_json(o.nvml.interval_s))
            self.writer.meta["versions"].update(driver=status.driver, nvml=status.nvml_version)
        if o.mode == "full":
            self.trace = TraceSession(self._trace_dir(), o.trace, self.device,
                                      worker_name=f"rank{o.rank_index}",
                                      span_base=self.span_base, say=self.say)
            module = getattr(workload, "module", None)
            if module is not None:
                self.modules = ModuleScopes(module, o.module_depth)
        ddp = getattr(workload, "ddp", None)
        if o.mode != "bare" and isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
            self.comm = CommTimer()
            try:
                self.comm.attach(ddp)
            except (RuntimeError, ValueError):  # the model has its own hook already
                self.comm = None
        self.writer.update(trace={"schedule": o.trace.to_json(), "files": []}
                           if o.mode == "full" else None)
        self.writer.write_run()

    def after_step(self, i: int) -> None:
        """Bookkeeping after step ``i``'s row is recorded: trace schedule, pools, monitor."""
        o = self.o
        if self.trace is not None:
            self.trace.step()
            self._sync_module_scopes()
            if self.rows[-1].get("traced") and not self.trace.recording \
                    and "heap_trimmed" not in (self.writer.meta.get("trace") or {}):
                # the window's event buffers are released: return the heap so later
                # steps' process memory is not inflated by them
                self.writer.meta["trace"]["heap_trimmed"] = trim_heap()
        if o.mode != "bare" and o.pool != "off" and hasattr(self.workload, "pool_stats"):
            self.pool_log.append((i, self.workload.pool_stats()))
        if self._heartbeat_due(i):
            self._heartbeat()
        if self.progress is not None:
            self.progress.step(i + 1, self.rows[-1])

    def _heartbeat_due(self, i: int) -> bool:
        """Step ``i`` ends with a heartbeat (every ``monitor_interval`` steps and the last)."""
        o = self.o
        return (i + 1) % o.monitor_interval == 0 or bool(o.steps and i + 1 == o.steps)

    def _sync_module_scopes(self) -> None:
        """Module scopes are installed only while torch.profiler records (no cost otherwise)."""
        if self.modules is not None and self.trace is not None:
            self.modules.enable(self.trace.recording)

    def _loop(self) -> None:
        o = self.o
        seed = getattr(self.config, "seed", None)
        if seed is not None:
            torch.manual_seed(seed)
        t0 = time.perf_counter()
        if self.make_workload is None:
            raise ValueError("run() needs make_workload; profiler.profile drives its own steps")
        self.say("building the workload (model, optimizer, data) ...")
        workload = self.make_workload(self.config, self.device, o.pool)
        self.writer.meta["timings"]["setup_s"] = round(time.perf_counter() - t0, 3)
        self.say(f"workload ready in {time.perf_counter() - t0:.1f} s; {o.steps} steps, "
                 f"record every {o.monitor_interval} steps in {self.writer.target}")
        self.start_collectors(workload)
        with self.trace if self.trace is not None else contextlib.nullcontext():
            self._sync_module_scopes()
            try:
                for i in range(o.steps):
                    self._stop.check()
                    bare = o.mode == "bare" or (o.measure_overhead and (i % 2) == ((i // 2) % 2))
                    traced = self.trace is not None and self.trace.recording
                    if o.mode != "bare":  # memory history only in the trace window (or guard)
                        self.snapshot.window(traced)
                    self.rows.append({**self._step(i, bare), "traced": int(traced)})
                    self.after_step(i)
            finally:
                if self.modules is not None:
                    self.modules.enable(False)

    def _step(self, i: int, bare: bool) -> dict[str, Any]:
        phase = "warmup" if i < self.o.warmup else "measured"
        if bare:
            c0, t0 = time.process_time(), time.perf_counter()
            result = step_fields(self.workload.step(i, None))
            t1, c1 = time.perf_counter(), time.process_time()
            return {**result, "step": i, "phase": phase, "wall_ms": (t1 - t0) * 1e3,
                    "cpu_ms": (c1 - c0) * 1e3, "end_ts": time.time(), "instrumented": 0,
                    "rank": self.o.rank_index}
        marks: dict[str, float] = {}

        def on_phase(name: str) -> None:
            sync(self.device)
            marks[name] = time.perf_counter()
            if self.trace is not None and self.trace.recording:
                self.trace.mark_phase(name, i, role_tensors_of(self.workload))
            self._stop.check()

        self.memory.begin_step()
        sync(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        result = self.workload.step(i, on_phase)
        sync(self.device)
        t1, c1 = time.perf_counter(), time.process_time()
        result = step_fields(result)
        f, b, p = (marks.get(k) for k in ("forward", "backward", "optimizer"))
        row = {**result, "step": i, "phase": phase, "wall_ms": (t1 - t0) * 1e3,
               "cpu_ms": (c1 - c0) * 1e3, "forward_ms": None if f is None else (f - t0) * 1e3,
               "backward_ms": None if b is None or f is None else (b - f) * 1e3,
               "optimizer_ms": None if p is None or b is None else (p - b) * 1e3,
               "end_ts": time.time(), "instrumented": 1, "rank": self.o.rank_index}
        if self.comm is not None:
            row.update(self.comm.take())
        row.update(self.memory.read(process=i == 0 or self._heartbeat_due(i)))
        self.snapshot.guard(i, row["peak_bytes"], row["reserved_bytes"])
        return row

    def _beat(self, phase: str) -> None:
        now = time.time()
        last = self._last_beat
        self._last_beat = now
        self.writer.update(steps_completed=len(self.rows), heartbeat={
            "at": utc_now(), "ts": round(now, 3), "phase": phase,
            "steps_completed": len(self.rows), "pid": os.getpid(), "host": socket.gethostname(),
            "interval_steps": self.o.monitor_interval,
            "every_s": None if last is None else round(now - last, 3)})

    def _append_rows(self, sync: bool) -> None:
        """steps.csv grows by the rows since the last call (whole rows, one write). The file
        is created at the first call, with the columns the rows so far report."""
        if self.steps_file is None:
            columns = self.rows.csv_columns(self.o.measure_overhead)
            self.steps_file = self.writer.appender(STEPS_CSV, columns)
        self.steps_file.add_values(self.rows.values(self._appended, self.steps_file.columns))
        self._appended = len(self.rows)
        self.steps_file.flush(sync=sync)

    def _heartbeat(self) -> None:
        """The record of the steps so far: new steps.csv rows appended and fsynced, run.json
        with a fresh heartbeat (both written off the training thread after the first one);
        a staged --overwrite run moves into place at its first one."""
        t0 = time.perf_counter()
        self.host_load.sample()
        self._append_rows(sync=False)
        self._beat("steps")
        if self._record is None:  # the first one in this thread: a staged run then moves
            self.writer.write_run()
            self.commit()
            self._record = BackgroundRecord(self.writer.run_dir / STEPS_CSV)
        else:
            self._record.submit(self.writer.run_dir / RUN_JSON, self.writer.run_json())
        self._record_s += time.perf_counter() - t0
        self._heartbeats += 1

    def _trace_dir(self) -> Path:
        """Where traces go: a multi-rank run's root, else this run's directory of the moment."""
        return self.o.trace_dir if self.o.trace_dir is not None else self.writer.run_dir

    def commit(self) -> None:
        """A staged --overwrite run moves into place; the files open in it follow."""
        if self.writer.commit():
            self.snapshot.path = str(self.writer.run_dir / CUDA_SNAPSHOT)
            if self.trace is not None:
                self.trace.run_dir = self._trace_dir()

    def _finish_steps(self) -> None:
        """steps.csv complete: the rows not yet appended, or (when a later row reported a
        column the file's header lacks) the whole file rewritten atomically."""
        try:
            columns = self.rows.csv_columns(self.o.measure_overhead)
            if self.steps_file is not None and list(self.steps_file.columns) == columns:
                self._append_rows(sync=True)
            elif len(self.rows) or self.steps_file is None:
                if self.steps_file is not None:
                    self.steps_file.close()
                    self.steps_file = None
                self.writer.write_csv(STEPS_CSV, self.rows.frame(columns), columns)
        finally:
            if self.steps_file is not None:
                self.steps_file.close()
            if self._record is not None:
                record, self._record = self._record, None
                record.close()

    def _failure_state(self) -> dict[str, Any] | None:
        try:
            state = self.memory.at_failure()
            if self.snapshot.dump(str(self.writer.run_dir / CUDA_SNAPSHOT)):
                state["snapshot"] = CUDA_SNAPSHOT
                state["snapshot_python_stacks"] = self.snapshot.recording
            return state
        except Exception as exc:  # the device may be unusable after the failure
            return {"error": f"{type(exc).__name__}: {exc}"}

    # --- finishing: always runs, writes whatever was collected -----------------------------
    def end(self, status: str, error: dict | None, at_failure: dict | None,
            elapsed_s: float) -> dict[str, Any]:
        """Write everything collected so far and run.json with ``status`` (a valid run even
        if post-processing never happens); the metadata. From here a signal no longer stops
        at once: it skips the remaining post-processing (``profiler.profiling``), which then
        records ``interrupted``; a full disk fails the parts that do not fit."""
        self._stop.finishing = True
        self.signals_at_end = self._stop.count
        problems: list[str] = []
        self.disk_full = []

        def attempt(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception as exc:
                err = self.error(exc)
                if err["type"] == "DiskFull":
                    self.disk_full.append(err["message"])
                problems.append(f"{what}: {err['type']}: {err['message']}")

        attempt("nvml", self._finish_nvml)
        attempt("steps", self._finish_steps)
        if len(self.rows) == 0 and self.writer.staged:
            # --overwrite and not one step recorded: the old run stays as it was.
            self.writer.discard()
            self.writer.update(status=status, error=error, steps_completed=0,
                               kept_previous_run=True)
            return self.writer.meta
        self._beat("post-processing")
        attempt("run.json", self.writer.write_run)
        attempt("commit", self.commit)
        if self.trace is not None and self.writer.meta.get("trace") is not None:
            self.writer.meta["trace"]["files"] = list(self.trace.files)
        if self.o.mode == "full" and status == "complete" and not self.snapshot.dumped_with_stacks:
            attempt("snapshot", lambda: None if self.snapshot.dump(
                str(self.writer.run_dir / CUDA_SNAPSHOT)) else None)
        attempt("snapshot-stop", self.snapshot.stop)
        if self.snapshot.active:
            self.writer.update(memory_history=self.snapshot.to_json())
        timings = self.writer.meta["timings"]
        timings["total_s"] = round(elapsed_s, 3)
        timings["record_s"] = round(self._record_s, 4)  # heartbeats: rows + run.json, fsynced
        timings["heartbeats"] = self._heartbeats
        if self.disk_full and status in ("complete", "interrupted"):
            status, error = "failed", {"type": "DiskFull", "message": self.disk_full[0]}
        self.writer.update(status=status, error=error, ended_at=utc_now(),
                           steps_completed=len(self.rows))
        if at_failure is not None:
            self.writer.update(memory_at_failure=at_failure)
        if problems:
            self.writer.update(finalize_errors=problems)
        # the status first (rank 0 of a multi-rank run waits for it), then the host load
        # (its after-run snapshot of other processes takes a fraction of a second)
        self.write_final_run()
        attempt("host_load", lambda: self.writer.update(host_load=self.host_load.end()))
        if problems:
            self.writer.update(finalize_errors=problems)
        self.write_final_run()
        return self.writer.meta

    def write_final_run(self) -> None:
        """run.json now; when it cannot be written the last valid one (the heartbeat) stays,
        and ``record_error`` in the returned metadata says why."""
        try:
            self.writer.write_run()
        except Exception as exc:
            self.writer.update(record_error=self.error(exc)["message"])

    def check_stop(self) -> None:
        """During post-processing: stop only for a signal that came after the steps ended."""
        if self._stop.finishing and self._stop.count > self.signals_at_end:
            raise StopRequested(self._stop.signame or "signal")

    def _finish_nvml(self) -> None:
        status = self.nvml.stop()
        if self.nvml.owner is not None:  # it was sampled: record what actually was
            self.writer.update(nvml=status.to_json(self.o.nvml.interval_s))
        rows = self.nvml.rows()
        if rows:
            self.writer.write_csv(NVML_CSV, rows, NVML_COLUMNS)

    def _device_extras(self) -> dict[str, Any]:
        """What the device really ran with: autocast only where the trainer applies it."""
        autocast = bool(getattr(self.config, "autocast", False)) and self.device.type == "cuda"
        extras: dict[str, Any] = {"autocast": "bf16" if autocast else "off"}
        if self.device.type == "cpu":
            extras["cpu_model"] = cpu_model()
            if self.memory.unavailable_reason:
                extras["allocator_stats_unavailable"] = self.memory.unavailable_reason
        return extras

    def scope_declarations(self) -> dict[str, Any]:
        """What the region view's categories are (``profiler.parse.trace.ScopeRules`` JSON):
        the workload's declared regions (``regions`` / ``region_prefix``, energy_flow's), the
        module scopes installed, and the module depth."""
        w = self.workload
        return {"region_prefix": getattr(w, "region_prefix", None),
                "regions": list(getattr(w, "regions", ()) or ()),
                "modules": list(self.modules.categories) if self.modules else [],
                "module_depth": self.modules.depth if self.modules else None}


def step_fields(result: Any) -> dict[str, Any]:
    """A workload's step result as plain steps.csv values (one-element tensors read)."""
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise TypeError(f"a workload's step() must return a dict of steps.csv fields, got "
                        f"{type(result).__name__}")
    out = {}
    for key, value in result.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().item() if value.numel() == 1 else None
        out[key] = value
    return out
