"""The trace window's tables (pure): parsed trace frames in, the run directory's
allocations, per-category memory, operators and the attribution check out.

Output ``WindowTables``: ``allocations`` (``rundir.ALLOCATION_COLUMNS``: every memory
event with its step, op, region and tensor role), ``memory_by_category``
(``rundir.MEMORY_COLUMNS``, views region and role, bytes), ``attribution`` (the region
sum check of ``analyze.memory.attribution_check``), ``operators``
(``rundir.OPERATOR_COLUMNS``, microseconds summed over the window).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from profiler.analyze.memory import assign_roles, attribution_check, category_stats, owners
from profiler.parse.trace import (
    ScopeRules,
    TraceFrames,
    attribute_memory,
    operator_table,
    phase_marks,
)
from profiler.rundir import (
    ALLOCATION_COLUMNS,
    ALLOCATION_EXTRA_COLUMNS,
    OPERATOR_COLUMNS,
    PHASE_MARK_PREFIX,
    TENSOR_ROLES,
)


@dataclass
class WindowTables:
    allocations: pd.DataFrame        # ALLOCATION_COLUMNS + owner_region
    memory_by_category: pd.DataFrame  # MEMORY_COLUMNS, views region and role
    attribution: dict[str, Any]
    operators: pd.DataFrame          # OPERATOR_COLUMNS, summed over the trace files


def merge_operators(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Sum over trace files, sorted by total CPU time, largest first."""
    tables = [t for t in tables if not t.empty]
    if not tables:
        return pd.DataFrame(columns=list(OPERATOR_COLUMNS))
    df = pd.concat(tables).groupby("name", as_index=False).sum()
    return df.sort_values("total_us", ascending=False)[list(OPERATOR_COLUMNS)]


def window_operators(traces: list[TraceFrames]) -> pd.DataFrame:
    """operators.csv of the traced window (OPERATOR_COLUMNS, summed over the trace files)."""
    return merge_operators([operator_table(frames) for frames in traces])


def window_tables(traces: list[TraceFrames], probes: Mapping[str, Mapping[int, str]],
                  device: str, tolerance_bytes: int, rules: ScopeRules | None = None,
                  operators: pd.DataFrame | None = None) -> WindowTables:
    """The tables of the traced window of one process on ``device`` ("cpu" | "cuda:N").

    ``probes``: phase-marker name -> {storage address: role} snapshots taken by the
    collector (the role view's parameters, gradients and optimizer state). ``rules``:
    which scopes are region categories (default: every user scope and module scope).
    ``operators``: ``window_operators(traces)`` when already computed."""
    rules = rules or ScopeRules()
    if operators is None:
        operators = window_operators(traces)
    events = []
    for frames in traces:
        ev = attribute_memory(frames, rules)
        marks = phase_marks(frames.annotations)
        probe_list = []
        for _, mark in marks.iterrows():
            name = f"{PHASE_MARK_PREFIX}{mark['phase']}#{mark['step']}"
            if name in probes:
                probe_list.append((float(mark["ts_us"]), probes[name]))
        ev["role"] = assign_roles(ev, marks, probe_list) if len(ev) else []
        events.append(ev)
    ev = pd.concat(events, ignore_index=True) if events else pd.DataFrame(
        columns=[*ALLOCATION_COLUMNS, "addr", "tid"])
    if len(ev):
        ev["owner_region"] = owners(ev, "region")
        steps = sorted(ev["step"].unique())
        on_device = ev[ev["device"] == device]  # host events of a CUDA run: allocations.csv only
        by_cat = pd.concat([
            category_stats(on_device, "owner_region", "region", steps, rules.categories()),
            category_stats(on_device, "role", "role", steps, TENSOR_ROLES),
        ], ignore_index=True)
    else:
        by_cat = pd.DataFrame()
    check = attribution_check(ev, "region", device, tolerance_bytes) if len(ev) else {
        "device": device, "events": 0, "sum_categories_bytes": 0, "allocator_total_bytes": 0,
        "tolerance_bytes": tolerance_bytes, "ok": True, "by_category": {}}
    # extension column owner_region: the region owning the block (a free is charged to
    # its allocation's region), what the viewer's stacked timeline adds up
    columns = [*ALLOCATION_COLUMNS, *ALLOCATION_EXTRA_COLUMNS]
    allocations = ev[columns] if len(ev) else pd.DataFrame(columns=columns)
    return WindowTables(allocations, by_cat, check, operators)
