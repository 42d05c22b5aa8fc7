"""The profile facade: collect, then parse -> analyze -> render, as the report facade does.

``run_profile(...)`` drives a workload through ``collect.session.ProfileSession`` (which
writes the raw files and a valid run.json with the status), then ``postprocess(session)``
adds what is derived from them: the trace window's allocations.csv, operators.csv and
memory_by_category.csv (``analyze.window`` on ``parse.trace`` frames), the pool view, the
timings and memory-growth summaries in run.json over the measured steps
(``analyze.steps`` through ``analyze.timings``, ``analyze.memory``),
and the TensorBoard scalars (``render.scalars``). ``profiler.profile(...)`` (a user's own
loop) ends through the same ``postprocess``. Whatever fails here is recorded in run.json's
``finalize_errors``; the status stays what collection saw.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import torch

from profiler.analyze import steps as step_rules
from profiler.analyze.memory import memory_growth, pool_rows
from profiler.analyze.timings import step_timings
from profiler.analyze.window import window_tables
from profiler.collect.distributed import (
    combine,
    gather_summaries,
    rank_summary,
    shutdown,
    wait_for_ranks,
)
from profiler.collect.session import ProfileOptions, ProfileSession
from profiler.collect.signals import StopSignals
from profiler.collect.tracing import ensure_distributed_info
from profiler.parse.trace import ScopeRules, read_frames, read_trace
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
    if own_group:
        shutdown()
    if info.rank != 0:
        return
    if gathered is not None:
        records = {int(s["rank"]): s for s in gathered}
    else:
        records = wait_for_ranks(session.o.run_dir, info.world_size)
        records[0] = rank_summary(meta)
    combined = combine(info.world_size, records)
    distributed = dict(meta.get("distributed") or {})
    distributed.update(ranks=combined["ranks"], failed_ranks=combined["failed_ranks"],
                       missing_ranks=combined["missing_ranks"])
    session.writer.update(distributed=distributed, status=combined["status"],
                          error=combined["error"])
    session.writer.write_run()


def postprocess(session: ProfileSession) -> dict[str, Any]:
    """Derived tables, summaries and scalars of a finished session; run.json's contents."""
    writer, o = session.writer, session.o
    problems: list[str] = list(writer.meta.get("finalize_errors") or [])

    def attempt(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            problems.append(f"{what}: {type(exc).__name__}: {exc}")
            return None

    category_rows: list[dict[str, Any]] = []
    if session.trace is not None and session.trace.files:
        window = attempt("trace", lambda: _window(session))
        if window is not None:
            category_rows.extend(window)
    for step, stats in session.pool_log:
        category_rows.extend(pool_rows(step, stats))
    if category_rows:
        attempt("categories", lambda: writer.write_csv(MEMORY_BY_CATEGORY_CSV, category_rows,
                                                       MEMORY_COLUMNS))
    rows = list(session.rows)
    # one definition of the measured steps and of throughput (profiler.analyze.steps)
    writer.meta["timings"].update(step_timings(rows, o.measure_overhead))
    if rows:
        steps = session.rows.frame((*STEPS_COLUMNS, "traced", "instrumented"))
        if not o.measure_overhead:  # as analyze.timings.steps_frame: bare rows are samples
            steps = steps.drop(columns="instrumented")
        writer.update(memory_growth=memory_growth(steps[step_rules.measured_mask(steps)]))
    if o.mode != "bare":
        attempt("scalars", lambda: _scalars(session, rows, category_rows))
    if problems:
        writer.update(finalize_errors=problems)
    writer.write_run()
    return writer.meta


def _window(session: ProfileSession) -> list[dict[str, Any]]:
    """The trace window's tables written; memory_by_category rows returned."""
    o, writer = session.o, session.writer
    assert session.trace is not None
    t0 = time.perf_counter()
    paths = [o.traces_in / f for f in session.trace.files]
    frames = []
    for path in paths:
        f = read_frames(path)
        # for TensorBoard's plugin: distributedInfo when torch did not write it, CUDA
        # runtime events under the category the plugin knows (collect.tracing)
        if "distributedInfo" not in f.metadata or session.device.type == "cuda":
            ensure_distributed_info(path, read_trace(path))
        frames.append(f)
    tolerance = o.tolerance_bytes
    if tolerance is None:
        tolerance = 0 if session.device.type == "cpu" else 1 << 20
    device = "cpu" if session.device.type == "cpu" else f"cuda:{session.device.index or 0}"
    scopes = session.scope_declarations()
    tables = window_tables(frames, session.trace.probes, device, tolerance,
                           ScopeRules.from_json(scopes))
    writer.write_csv(ALLOCATIONS_CSV, tables.allocations, ALLOCATION_COLUMNS)
    writer.write_csv(OPERATORS_CSV, tables.operators, OPERATOR_COLUMNS)
    check = dict(tables.attribution)
    check["view"] = "region"
    check["scopes"] = {k: v for k, v in scopes.items() if k != "module_depth"}
    if scopes["module_depth"] is not None:
        check["module_depth"] = scopes["module_depth"]
    writer.update(attribution=check)
    writer.meta["timings"]["trace_postprocess_s"] = round(time.perf_counter() - t0, 3)
    return tables.memory_by_category.to_dict("records")


def _scalars(session: ProfileSession, rows: list[dict[str, Any]],
             category_rows: list[dict[str, Any]]) -> None:
    scalars = ScalarWriter(session.o.run_dir)
    try:
        scalars.steps(rows)
        scalars.categories(category_rows)
        scalars.nvml(session.nvml.rows())
        scalars.summary(session.writer.meta["timings"], len(rows))
    finally:
        scalars.close()
