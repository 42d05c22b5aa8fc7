"""The profile facade: collect, then parse -> analyze -> render, as the report facade does.

``run_profile(...)`` drives a workload through ``collect.session.ProfileSession`` (which
writes the raw files and a valid run.json with the status), then ``postprocess(session)``
adds what is derived from them: the trace window's allocations.csv, operators.csv and
memory_by_category.csv (``analyze.window`` on ``parse.trace`` frames), the pool view, the
timings and memory-growth summaries in run.json over the measured steps
(``analyze.steps`` through ``analyze.timings``, ``analyze.memory``),
and the TensorBoard scalars (``render.scalars``). ``profiler.profile(...)`` (a user's own
loop) ends through the same ``postprocess``. Whatever fails here is recorded in run.json's
``finalize_errors``; the status stays what collection saw, except that a signal during
post-processing skips the remaining heavy parts and records ``interrupted`` (every file
already complete stays), and a full disk records ``failed`` ("no space left on <path>").
The session's stop signals and run-name lock cover post-processing; it releases both.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import pandas as pd
import torch

from profiler.analyze import steps as step_rules
from profiler.analyze.memory import memory_growth, pool_rows
from profiler.analyze.ranks import collective_overlap
from profiler.analyze.timings import step_timings
from profiler.analyze.window import window_operators, window_tables
from profiler.collect.distributed import (
    combine,
    combined_fields,
    finish_root_record,
    gather_summaries,
    rank_summary,
    shutdown,
    wait_for_ranks,
)
from profiler.collect.progress import duration
from profiler.collect.session import ProfileOptions, ProfileSession
from profiler.collect.signals import StopRequested, StopSignals
from profiler.collect.tracing import ensure_distributed_info
from profiler.parse.trace import ScopeRules, TraceFrames, read_frames, read_trace
from profiler.render.scalars import ScalarWriter
from profiler.rundir import (
    ALLOCATION_COLUMNS,
    ALLOCATIONS_CSV,
    MEMORY_BY_CATEGORY_CSV,
    MEMORY_COLUMNS,
    OPERATOR_COLUMNS,
    OPERATORS_CSV,
    STEPS_COLUMNS,
)


def run_profile(options: ProfileOptions, config: Any, device: torch.device,
                make_workload: Callable[[Any, torch.device, str], Any],
                log: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Profile ``make_workload``'s workload into ``options.run_dir``; run.json's contents."""
    session = ProfileSession(options, config, device, make_workload, log=log)
    if options.rank is None or not options.rank.distributed:
        with session._stop:  # a signal during post-processing is the run's to record
            session.run()
            return postprocess(session)
    # torchrun asks every rank to stop (SIGTERM) once one fails, or on Ctrl-C, and kills
    # them 30 s later: the finishing is not cut short by that request (the session's own
    # handler turns it into "interrupted" during the steps).
    with StopSignals():
        session.run()
        meta = postprocess(session)
        finish_ranks(session, own_group=True)
    return meta


def finish_ranks(session: ProfileSession, own_group: bool) -> None:
    """The end of one rank of a multi-rank run: every rank's summary gathered (when this
    rank completed), the process group left (``own_group``: the profiler created it), and
    on rank 0 the whole run's status and ``distributed.ranks`` in run.jsonc (from the
    gathered summaries, else from the rank records on this file system)."""
    info = session.o.rank
    if info is None or not info.distributed:
        return
    meta = session.writer.meta
    gathered = gather_summaries(meta) if meta["status"] == "complete" else None
    if gathered is None and own_group:
        shutdown()  # a peer blocked on this rank fails now instead of at its timeout
    if info.rank == 0:
        if gathered is not None:
            records = {int(s["rank"]): s for s in gathered}
        else:
            records = wait_for_ranks(session.o.run_dir, info.world_size)
            records[0] = rank_summary(meta)
        session.writer.update(**combined_fields(meta, combine(info.world_size, records)))
        session.writer.write_run()
    elif gathered is None and session.o.trace_dir is not None:
        # rank 0 may be gone, or may have combined the run before this rank ended
        finish_root_record(session.o.trace_dir, info.world_size, info.rank)
    if gathered is not None and own_group:
        # after the gathered record is written: the peers' last reads of the all-gather
        # have had that long to finish before this rank closes its connections
        shutdown()


def postprocess(session: ProfileSession) -> dict[str, Any]:
    """Derived tables, summaries and scalars of a finished session; run.json's contents.
    Releases the run name when done."""
    # a multi-rank run's finishing defers signals (run_profile, api.profile): not recorded here
    distributed = session.o.rank is not None and session.o.rank.distributed
    try:
        with contextlib.nullcontext() if distributed else session._stop:
            return _postprocess(session)
    finally:
        session.close()


def _postprocess(session: ProfileSession) -> dict[str, Any]:
    writer, o = session.writer, session.o
    if writer.meta.get("kept_previous_run"):
        return writer.meta  # an --overwrite run with no step: nothing of it was kept
    problems: list[str] = list(writer.meta.get("finalize_errors") or [])
    skipped: list[str] = []
    disk_full = list(session.disk_full)
    signals_before = session.signals_at_end

    def attempt(what: str, fn: Callable[[], Any], heavy: bool = False) -> Any:
        if heavy and session._stop.count > signals_before:
            skipped.append(what)
            return None
        try:
            return fn()
        except StopRequested:
            skipped.append(what)
        except Exception as exc:
            err = session.error(exc)
            if err["type"] == "DiskFull":
                disk_full.append(err["message"])
            problems.append(f"{what}: {err['type']}: {err['message']}")
        return None

    category_rows: list[dict[str, Any]] = []
    if session.trace is not None and session.trace.files:
        read = attempt("operators", lambda: _read_window(session))
        if read is not None:
            window = attempt("trace", lambda: _window(session, *read), heavy=True)
            if window is not None:
                category_rows.extend(window)
    for step, stats in session.pool_log:
        category_rows.extend(pool_rows(step, stats))
    if category_rows:
        attempt("categories", lambda: writer.write_csv(MEMORY_BY_CATEGORY_CSV, category_rows,
                                                       MEMORY_COLUMNS), heavy=True)
    rows = list(session.rows)
    # one definition of the measured steps and of throughput (profiler.analyze.steps)
    writer.meta["timings"].update(step_timings(rows, o.measure_overhead))
    if rows:
        steps = session.rows.frame((*STEPS_COLUMNS, "traced", "instrumented"))
        if not o.measure_overhead:  # as analyze.timings.steps_frame: bare rows are samples
            steps = steps.drop(columns="instrumented")
        writer.update(memory_growth=memory_growth(steps[step_rules.measured_mask(steps)]))
    if o.mode != "bare":
        attempt("scalars", lambda: _scalars(session, rows, category_rows), heavy=True)
    status, error = writer.meta["status"], writer.meta["error"]
    if session._stop.count > signals_before:
        status = "interrupted"
        error = {"type": "StopRequested",
                 "message": f"stopped by {session._stop.signame} during post-processing"
                            + (f"; not written: {', '.join(skipped)}" if skipped else "")}
    elif disk_full and status in ("complete", "interrupted"):
        status, error = "failed", {"type": "DiskFull", "message": disk_full[0]}
    writer.update(status=status, error=error)
    if isinstance(writer.meta.get("heartbeat"), dict):
        writer.meta["heartbeat"]["phase"] = "finished"
    if problems:
        writer.update(finalize_errors=problems)
    session.write_final_run()
    return writer.meta


def _read_window(session: ProfileSession) -> tuple[list[TraceFrames], pd.DataFrame, float]:
    """The trace files parsed and operators.csv written (before the heavy part, so that a
    signal during it still leaves operators.csv); (frames, operators, seconds taken)."""
    writer = session.writer
    assert session.trace is not None
    t0 = time.perf_counter()
    paths = [session.trace.run_dir / f for f in session.trace.files]
    size = sum(p.stat().st_size for p in paths if p.exists())
    session.say(f"reading the trace window ({len(paths)} file(s), {size / 2**20:.1f} MiB) "
                f"for operators.csv ...")
    frames = []
    for path in paths:
        f = read_frames(path)
        # for TensorBoard's plugin: distributedInfo when torch did not write it, CUDA
        # runtime events under the category the plugin knows (collect.tracing)
        if "distributedInfo" not in f.metadata or session.device.type == "cuda":
            ensure_distributed_info(path, read_trace(path))
        frames.append(f)
    operators = window_operators(frames)
    writer.write_csv(OPERATORS_CSV, operators, OPERATOR_COLUMNS)
    if session.o.rank is not None and session.o.rank.distributed:
        comm = collective_overlap(frames)
        if comm is not None:  # this rank's communication in its trace window
            writer.update(distributed={**(writer.meta.get("distributed") or {}),
                                       "trace_comm": comm})
    return frames, operators, time.perf_counter() - t0


def _window(session: ProfileSession, frames: list[TraceFrames], operators: pd.DataFrame,
            read_s: float) -> list[dict[str, Any]]:
    """The trace window's allocations written, the attribution check recorded;
    memory_by_category rows returned. Stops between its parts for a signal."""
    o, writer = session.o, session.writer
    assert session.trace is not None
    t0 = time.perf_counter()
    session.say("post-processing the trace window: allocations and memory per category ...")
    session.check_stop()
    tolerance = o.tolerance_bytes
    if tolerance is None:
        tolerance = 0 if session.device.type == "cpu" else 1 << 20
    device = "cpu" if session.device.type == "cpu" else f"cuda:{session.device.index or 0}"
    scopes = session.scope_declarations()
    tables = window_tables(frames, session.trace.probes, device, tolerance,
                           ScopeRules.from_json(scopes), operators)
    session.check_stop()
    writer.write_csv(ALLOCATIONS_CSV, tables.allocations, ALLOCATION_COLUMNS)
    check = dict(tables.attribution)
    check["view"] = "region"
    check["scopes"] = {k: v for k, v in scopes.items() if k != "module_depth"}
    if scopes["module_depth"] is not None:
        check["module_depth"] = scopes["module_depth"]
    writer.update(attribution=check)
    took = read_s + time.perf_counter() - t0
    writer.meta["timings"]["trace_postprocess_s"] = round(took, 3)
    session.say(f"post-processed the trace window in {duration(took)}")
    return tables.memory_by_category.to_dict("records")


def _scalars(session: ProfileSession, rows: list[dict[str, Any]],
             category_rows: list[dict[str, Any]]) -> None:
    scalars = ScalarWriter(session.writer.run_dir)
    try:
        scalars.steps(rows)
        scalars.categories(category_rows)
        scalars.nvml(session.nvml.rows())
        scalars.summary(session.writer.meta["timings"], len(rows))
    finally:
        scalars.close()
