"""``profiler.profile(...)``: profile your own training loop into a run directory.

    import profiler
    with profiler.profile("runs/mine", mode="full", model=model) as prof:
        for x, y in loader:
            with prof.phase("forward"):
                loss = loss_fn(model(x), y)
            with prof.phase("backward"):
                loss.backward()
            with prof.phase("optimizer"):
                opt.step(); opt.zero_grad()
            prof.step(loss=loss, samples=len(x))

The run directory is the one ``python -m profiler profile`` writes (run.json,
steps.csv, memory_by_category.csv, allocations.csv, operators.csv, traces, TensorBoard
scalars), so ``make report``, ``--fail-on-regression`` and TensorBoard read it unchanged.
Phases are optional (a step without them has only ``wall_ms``); ``forward``, ``backward``
and ``optimizer`` fill steps.csv's ``*_ms`` columns, any other phase a ``<name>_ms``
column. Keyword fields of ``step()`` become steps.csv columns (tensors are read with
``.item()``). An exception inside the ``with`` block leaves status ``failed`` (``oom``
for out-of-memory) and propagates. Ctrl-C or SIGTERM stops the loop at the next step end
(or phase end, in full mode and on CUDA), leaves ``interrupted`` and then raises
``KeyboardInterrupt`` (SIGINT) or ``SystemExit(143)`` (SIGTERM) out of the block; a second
Ctrl-C interrupts at once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from profiler.collect.distributed import rank_from_env, rank_of_group
from profiler.collect.nvml import NvmlConfig
from profiler.collect.session import MODES, ProfileOptions, ProfileSession
from profiler.collect.signals import StopRequested, StopSignals
from profiler.collect.stats import sync
from profiler.collect.tracing import TraceSchedule
from profiler.rundir import PHASE_SCOPE_PREFIX, rank_dir

STANDARD_PHASES = ("forward", "backward", "optimizer")
DEFAULT_TRACE = TraceSchedule(wait=2, warmup=1, active=3, repeat=1)


class _UserLoop:
    """The workload seen by the session: the user's loop, which drives itself."""

    def __init__(self, model: torch.nn.Module | None, device: torch.device,
                 optimizer: Any | None) -> None:
        self.module = model
        self.ddp = model if isinstance(model, torch.nn.parallel.DistributedDataParallel) \
            else None  # its gradient synchronization is timed (steps.csv comm_ms)
        self.device = device
        self.optimizer = optimizer

    def role_tensors(self) -> dict[str, list[torch.Tensor]]:
        if self.module is None:
            return {}
        params: list[torch.Tensor] = list(self.module.parameters())
        roles: dict[str, list[torch.Tensor]] = {
            "parameter": params, "gradient": [p.grad for p in params if p.grad is not None]}
        if self.optimizer is not None:
            roles["optimizer_state"] = [v for st in self.optimizer.state.values()
                                        for v in st.values() if isinstance(v, torch.Tensor)]
        return roles

    def pool_stats(self) -> dict[str, dict[str, int]]:
        return {}


def _device_of(model: torch.nn.Module | None, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if model is not None:
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


# The clocks and the tensor type as module globals: one dictionary lookup each on the per-step
# path, which runs in a cache the training step has just evicted (see ``_LeanPhase``).
_clock, _wall_clock, _cpu_clock = time.perf_counter, time.time, time.process_time
_Tensor = torch.Tensor

# The longest a captured step waits to be recorded (progress lines stay timely when
# steps are slow; fast steps, where deferring pays, reach monitor_interval first).
DEFER_MAX_S = 5.0


class _Phase:
    """``Profile.phase``'s context manager (a class, not a generator: fewer steps per use)."""

    __slots__ = ("_prof", "_name", "_scope", "_start")

    def __init__(self, prof: Profile, name: str) -> None:
        self._prof, self._name = prof, name
        self._scope: Any = None  # a record_function scope inside the trace window

    def __enter__(self) -> Profile:
        s = self._prof.session
        if s.trace is not None and s.trace.recording:
            scope = torch.profiler.record_function(PHASE_SCOPE_PREFIX + self._name)
            scope.__enter__()
            self._scope = scope
        self._start = time.perf_counter()
        return self._prof

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        prof, name, s = self._prof, self._name, self._prof.session
        if self._scope is not None:
            self._scope.__exit__(None, None, None)
        if exc_type is not None:
            return  # the step failed: nothing of this phase is recorded
        if prof._cuda and not prof._bare:
            sync(prof.device)
        elapsed = time.perf_counter() - self._start
        phases = prof._phases
        phases[name] = phases.get(name, 0.0) + elapsed
        if self._scope is not None and s.trace is not None:
            s.trace.mark_phase(name, prof._index, prof._loop.role_tensors())
        if s._stop.signame is not None:
            s._stop.check()


class _LeanPhase:
    """The phase of a light or bare CPU loop: no trace scope and no device to wait for, so
    only the clock. One object per phase name, reused step after step (``Profile.phase``):
    right after a training step the cache holds none of this code, and every object and
    attribute it touches costs a miss. A stop request is checked at the step's end."""

    __slots__ = ("_prof", "_name", "_start")

    def __init__(self, prof: Profile, name: str) -> None:
        self._prof, self._name = prof, name
        self._start: float | None = None  # set while the phase runs

    def __enter__(self) -> Profile:
        self._start = _clock()
        return self._prof

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        elapsed = _clock() - self._start  # type: ignore[operator]
        self._start = None
        if exc_type is None:
            phases = self._prof._phases
            phases[self._name] = phases.get(self._name, 0.0) + elapsed


class Profile:
    """The object ``profile(...)`` returns; use it as a context manager."""

    def __init__(self, run_dir: str | Path, mode: str = "full", model: torch.nn.Module | None = None,
                 *, optimizer: Any | None = None, name: str | None = None, warmup: int = 3,
                 trace: TraceSchedule | None = None, module_depth: int | None = None,
                 device: str | torch.device | None = None, overwrite: bool = False,
                 monitor_interval: int = 10, log: TextIO | None = sys.stderr,
                 config: dict[str, Any] | None = None, tolerance_bytes: int | None = None,
                 nvml: NvmlConfig | None = None, workload: str = "user loop") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        if monitor_interval <= 0:
            raise ValueError(f"monitor_interval must be > 0, got {monitor_interval}")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        run_dir = Path(run_dir)
        rank = rank_of_group(rank_from_env())
        mine = rank_dir(run_dir, rank.rank) if rank is not None else run_dir  # under torchrun
        if mine.exists() and not overwrite:
            raise FileExistsError(f"run directory {mine} already exists "
                                  f"(overwrite=True replaces it)")
        self.device = _device_of(model, device)
        self.options = ProfileOptions(
            run_dir=mine,
            trace_dir=run_dir if rank is not None and rank.distributed else None,
            rank=rank, name=name or run_dir.name, preset=None, variant=None, pool="off",
            mode=mode, steps=0, warmup=warmup, monitor_interval=monitor_interval,
            overrides={}, nvml=nvml or NvmlConfig(), trace=trace or DEFAULT_TRACE,
            overwrite=overwrite, command=tuple(sys.argv), tolerance_bytes=tolerance_bytes,
            workload=workload, module_depth=module_depth)
        self.session = ProfileSession(self.options, config or {}, self.device, None, log=log)
        self._loop = _UserLoop(model, self.device, optimizer)
        self._bare = mode == "bare"
        self._index = 0
        self._t0 = self._c0 = 0.0
        self._t_start = 0.0
        self._phases: dict[str, float] = {}
        self._pending: list[tuple] = []  # captured steps not yet recorded (``step``)
        self._cuda = self.device.type == "cuda"  # device syncs: CUDA only
        # light / bare on CPU: rows recorded at heartbeats, lean phases (``step``, ``phase``)
        self._defer = mode != "full" and not self._cuda
        self._lean: dict[str, _LeanPhase] = {}
        self._flushed_at = time.perf_counter()
        self.status: str | None = None
        self.meta: dict[str, Any] | None = None

    @property
    def run_dir(self) -> Path:
        return self.options.run_dir

    # --- context manager --------------------------------------------------------------------
    def __enter__(self) -> Profile:
        s = self.session
        s.begin()  # the run name is locked until post-processing ends (postprocess)
        s._stop.__enter__()  # left after post-processing, which a signal also stops cleanly
        self._t_start = time.perf_counter()
        try:
            s.start_collectors(self._loop)
            if s.trace is not None:
                s.trace.__enter__()
                s._sync_module_scopes()
        except BaseException as exc:
            self._close(exc)
            raise
        self._begin_step()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._close(exc)
        if isinstance(exc, StopRequested):
            if exc.signame == "SIGTERM":
                raise SystemExit(143) from None
            raise KeyboardInterrupt(str(exc)) from None

    def _close(self, exc: BaseException | None) -> None:
        s = self.session
        try:
            self._flush()  # the steps captured since the last heartbeat
        except Exception as flush_exc:
            exc = exc or flush_exc
        status: str = "complete"
        error: dict | None = None
        at_failure: dict | None = None
        if exc is not None:
            found, error, at_failure = s.failure(exc)
            status = found or "failed"
            if found is None:
                error = {"type": type(exc).__name__, "message": str(exc)}
        s.stop_progress()
        distributed = s.o.rank is not None and s.o.rank.distributed
        # a multi-rank run's finishing is not cut short by torchrun's stop request (see
        # profiling.run_profile); one process records a signal during post-processing
        guard = StopSignals().__enter__() if distributed else None
        if s.modules is not None:
            s.modules.enable(False)
        if s.trace is not None and s.trace._prof is not None:
            try:
                s.trace.__exit__(None, None, None)
            except Exception as trace_exc:  # the trace of a failed run may be unwritable
                s.writer.meta.setdefault("finalize_errors", []).append(
                    f"trace: {type(trace_exc).__name__}: {trace_exc}")
        s.o = _with_steps(s.o, len(s.rows))
        from profiler.profiling import finish_ranks, postprocess

        try:
            s.end(status, error, at_failure, time.perf_counter() - self._t_start)
            self.meta = postprocess(s)
            if distributed:
                finish_ranks(s, own_group=False)
        finally:
            if guard is not None:
                guard.__exit__(None, None, None)
            s._stop.__exit__(None, None, None)
        self.status = self.meta["status"]

    # --- the loop ---------------------------------------------------------------------------
    def _begin_step(self, counters_begun: bool = False) -> None:
        """Start the next step's clocks (``counters_begun``: the memory counters were
        already started by the previous step's read)."""
        self._phases = {}
        s = self.session
        if not self._bare:
            if s.snapshot.active:  # CUDA memory history
                s.snapshot.window(s.trace is not None and s.trace.recording)
            if not counters_begun:
                s.memory.begin_step()
            if self._cuda:
                sync(self.device)
        self._c0, self._t0 = time.process_time(), time.perf_counter()

    def phase(self, name: str) -> _Phase | _LeanPhase:
        """Time one phase of the current step (device-synchronized at its end except in
        bare mode); inside the trace window it is also a scope of the region view."""
        lean = self._lean.get(name)
        if lean is not None and lean._start is None:
            return lean
        if not name or "#" in name:
            raise ValueError(f"phase name must be non-empty without '#', got {name!r}")
        if not self._defer:
            return _Phase(self, name)
        lean = _LeanPhase(self, name)
        self._lean.setdefault(name, lean)  # (a phase nested in itself: an object of its own)
        return lean

    def step(self, **fields: Any) -> None:
        """End the current step: record its row (``fields`` become steps.csv columns).

        In light and bare mode on CPU the rows of up to ``monitor_interval`` steps (at most
        ``DEFER_MAX_S`` seconds of them) are kept as captured figures and recorded together
        at the next heartbeat (or at the end):
        the bookkeeping of a row then runs once per heartbeat in a warm cache instead of
        after every training step in a cold one, which is most of its cost. In full mode
        (the trace schedule advances per step) and on CUDA (the OOM guard reads each
        step's peak) every row is recorded at once."""
        s = self.session
        if self._cuda and not self._bare:
            sync(self.device)
        t1, end_ts, c1 = _clock(), _wall_clock(), _cpu_clock()
        for key, value in fields.items():
            if isinstance(value, _Tensor):  # read now: the caller may change it later
                fields[key] = value.item() if value.numel() == 1 else None
        index = self._index
        memory: Any = None
        if not self._bare:
            every = self.options.monitor_interval
            # process figures on the first step and at heartbeats (``StepMemory``)
            memory = s.memory.capture() if self._defer and index and (index + 1) % every \
                else None
            if memory is None:
                memory = s.memory.read(begin_next=True)
        comm = s.comm.take() if s.comm is not None else None
        traced = 0 if s.trace is None else int(s.trace.recording)
        self._pending.append((index, t1 - self._t0, c1 - self._c0, end_ts,
                              self._phases, fields, memory, comm, traced))
        self._index = index + 1
        flush = (not self._defer or len(self._pending) >= self.options.monitor_interval
                 or t1 - self._flushed_at >= DEFER_MAX_S)
        if flush:
            self._flush()
            self._flushed_at = t1
        if s._stop.signame is not None:
            s._stop.check()
        if flush:  # the next step's clocks start after the bookkeeping
            self._begin_step(counters_begun=True)
        else:  # the next step starts where this one ended (``capture`` began its counters)
            self._phases = {}
            self._c0, self._t0 = c1, t1

    def _flush(self) -> None:
        """Record the captured rows (``step``), each followed by the session's bookkeeping."""
        s = self.session
        pending, self._pending = self._pending, []
        for i, wall_s, cpu_s, end_ts, phases, values, memory, comm, traced in pending:
            row: dict[str, Any] = dict(values)
            for name, seconds in phases.items():
                row[f"{name}_ms"] = seconds * 1e3
            row.update(step=i, phase="warmup" if i < self.options.warmup else "measured",
                       wall_ms=wall_s * 1e3, cpu_ms=cpu_s * 1e3, end_ts=end_ts,
                       rank=self.options.rank_index, instrumented=0 if self._bare else 1,
                       traced=traced)
            if comm is not None:
                row.update(comm)
            if memory is not None:
                row.update(memory if type(memory) is dict else s.memory.figures(memory))
                s.snapshot.guard(i, row["peak_bytes"], row["reserved_bytes"])
            s.rows.append(row)
            s.after_step(i)


def _with_steps(options: ProfileOptions, steps: int) -> ProfileOptions:
    from dataclasses import replace

    return replace(options, steps=steps)


def profile(run_dir: str | Path, mode: str = "full", model: torch.nn.Module | None = None,
            **options: Any) -> Profile:
    """Profile a training loop into ``run_dir`` (see the module docstring).

    mode: ``bare`` (wall time only), ``light`` (phase times, allocator and RSS per step,
    NVML, TensorBoard scalars), ``full`` (light + a torch.profiler window: steps
    ``trace.wait + trace.warmup`` to ``+ trace.active``, with per-category memory).
    model: the ``nn.Module`` trained; gives per-module attribution (``module_depth``:
    qualified-name depth, None = automatic) and the tensor roles.
    Other options: ``optimizer`` (optimizer-state role), ``name``, ``warmup`` (steps kept out
    of statistics, default 3), ``trace`` (``TraceSchedule``), ``device``, ``overwrite``,
    ``monitor_interval`` (progress line and flush every N steps), ``log`` (None: silent),
    ``config`` (your settings, recorded in run.json).
    """
    return Profile(run_dir, mode, model, **options)
