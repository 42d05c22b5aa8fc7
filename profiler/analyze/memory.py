"""Pure memory analyses: DataFrames in, DataFrames / dicts out. No I/O.

Inputs are the attributed allocation events of ``profiler.parse.trace.attribute_memory``
(ts_us, step, bytes, total_allocated, device, addr, op, region) and ``steps.csv``
rows (``profiler.rundir.STEPS_COLUMNS``). Memory in bytes, times in microseconds.

Ownership: an allocation belongs to its own category; a free belongs to the
category of the allocation it releases (the latest earlier allocation at the
same address on the same device). A free whose allocation precedes the window
is charged to ``other``, so ``other`` may show negative live bytes. With this
rule the live bytes of all categories sum, at every instant, to the allocator's
change since the window began.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from profiler.rundir import MEMORY_COLUMNS, OTHER_REGION

FORWARD, BACKWARD, OPTIMIZER = "forward", "backward", "optimizer"


def _blocks(events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The events in block order (by device, address, then time; stable) and, per position
    in that order, whether the next event is on the same block."""
    device = pd.factorize(events["device"])[0]
    addr = events["addr"].to_numpy()
    order = np.lexsort((events["ts_us"].to_numpy(), addr, device))
    d, a = device[order], addr[order]
    same_next = np.zeros(len(order), dtype=bool)
    same_next[:-1] = (d[1:] == d[:-1]) & (a[1:] == a[:-1])
    return order, same_next


def owners(events: pd.DataFrame, label: str) -> pd.Series:
    """Per event, the ``label`` column value of the allocation owning its block (see module doc)."""
    order, same_next = _blocks(events)
    b = events["bytes"].to_numpy()[order]
    values = events[label].to_numpy(dtype=object)[order]
    out = values.copy()
    frees = b < 0
    prev_alloc = np.zeros(len(order), dtype=bool)
    prev_alloc[1:] = (b[:-1] > 0) & same_next[:-1]
    owned = np.flatnonzero(frees & prev_alloc)
    out[owned] = values[owned - 1]
    out[frees & ~prev_alloc] = OTHER_REGION
    result = np.empty(len(order), dtype=object)
    result[order] = out
    return pd.Series(result, index=events.index, name=label).astype(events[label].dtype)


def free_times(events: pd.DataFrame) -> pd.Series:
    """Per allocation event, the ts_us of the free releasing it (NaN if not freed in the window)."""
    order, same_next = _blocks(events)
    b = events["bytes"].to_numpy()[order]
    ts = events["ts_us"].to_numpy(dtype=np.float64)[order]
    freed = np.flatnonzero((b[:-1] > 0) & (b[1:] < 0) & same_next[:-1])
    out = np.full(len(order), np.nan)
    out[order[freed]] = ts[freed + 1]
    return pd.Series(out, index=events.index)


def event_phases(events: pd.DataFrame, marks: pd.DataFrame, ts: pd.Series | None = None) -> pd.Series:
    """Phase (forward|backward|optimizer|other) of each timestamp from phase-end markers.

    ``marks``: step, phase, ts_us of each phase end. A time belongs to the phase
    of the first marker at or after it within the same step; after the
    optimizer marker it is ``other``.
    """
    ts = events["ts_us"] if ts is None else ts
    if marks.empty:
        return pd.Series("other", index=events.index)
    m = marks.sort_values("ts_us")
    idx = np.searchsorted(m["ts_us"].to_numpy(), ts.to_numpy(), side="left")
    valid = idx < len(m)
    safe = np.clip(idx, 0, len(m) - 1)
    phase = np.where(valid, m["phase"].to_numpy()[safe], "other")
    same_step = valid & (m["step"].to_numpy()[safe] == events["step"].to_numpy())
    return pd.Series(np.where(same_step, phase, "other"), index=events.index)


def assign_roles(events: pd.DataFrame, marks: pd.DataFrame,
                 probes: Iterable[tuple[float, Mapping[int, str]]]) -> pd.Series:
    """Tensor role of each event: parameter, gradient, optimizer_state, activation, temporary, other.

    Method, in order, for each allocation (a free takes its allocation's role):
    1. ``probes``: (ts_us, {address: role}) snapshots of the workload's parameters,
       gradients and optimizer state taken at phase ends. An allocation whose
       address is in a snapshot and that is live at the snapshot time has that role.
    2. activation: allocated in the forward phase, freed in the backward or
       optimizer phase of the same step (saved for backward, released by autograd).
    3. temporary: allocated and freed within the same phase of the same step.
    4. other: anything else (freed in a later step, never freed in the window, or
       allocated outside the phases).
    """
    alloc = events["bytes"] > 0
    freed_at = free_times(events)
    alloc_phase = event_phases(events, marks)
    free_phase = event_phases(events, marks, freed_at.fillna(np.inf))
    role = pd.Series("other", index=events.index, dtype=object)
    same_phase = alloc & freed_at.notna() & (alloc_phase == free_phase) & (alloc_phase != "other")
    role[same_phase] = "temporary"
    activation = (alloc & freed_at.notna() & (alloc_phase == FORWARD)
                  & free_phase.isin([BACKWARD, OPTIMIZER]))
    role[activation] = "activation"
    ts = events["ts_us"]
    end = freed_at.fillna(np.inf)
    for probe_ts, by_addr in probes:
        if not by_addr:
            continue
        hit_role = events["addr"].map(by_addr)
        hit = alloc & hit_role.notna() & (ts <= probe_ts) & (end >= probe_ts)
        role[hit] = hit_role[hit]
    events = events.assign(_role=role)
    return owners(events, "_role")


def category_stats(events: pd.DataFrame, category: str, view: str, steps: Iterable[int],
                   categories: Iterable[str]) -> pd.DataFrame:
    """Per step and category: ``profiler.rundir.MEMORY_COLUMNS`` rows for one view.

    ``events[category]`` must already hold the owning category (see ``owners``).
    live_bytes: net bytes of the category allocated since the window began, at
    step end. peak_bytes: the highest such value within the step (starting from
    the previous step's live value). alloc/free counts and bytes are the events
    of the step (free_bytes positive). Pool columns stay empty.
    """
    steps = sorted(set(steps))
    labels = events[category].to_numpy(dtype=object)
    known = list(categories)
    cats = list(dict.fromkeys(known + sorted(set(pd.unique(labels)) - set(known))))
    grid = pd.MultiIndex.from_product([cats, steps], names=["cat", "step"])
    n_cats, n_steps = len(cats), len(steps)
    # events in time order (stable), each with its category's and step's position
    order = np.argsort(events["ts_us"].to_numpy(), kind="stable")
    code = pd.Index(cats).get_indexer(labels[order])
    step_of = events["step"].to_numpy()[order]
    where = np.searchsorted(np.asarray(steps), step_of)
    where_ok = where < n_steps
    known_step = where_ok & (np.asarray(steps)[np.minimum(where, n_steps - 1)] == step_of)
    b = events["bytes"].to_numpy(dtype=np.int64)[order]
    # cum: the category's net bytes since the window began, after each event
    by_cat = np.argsort(code, kind="stable")
    sums = np.cumsum(b[by_cat])
    first = np.flatnonzero(np.r_[True, code[by_cat][1:] != code[by_cat][:-1]])[: len(b)]
    base = np.repeat(sums[first] - b[by_cat][first], np.diff(np.r_[first, len(by_cat)]))
    cum = np.empty(len(b), dtype=np.int64)
    cum[by_cat] = sums - base
    # per (category, step) cell: last and highest cum, counts and bytes
    cell = (code * n_steps + where)[known_step]
    cum, b = cum[known_step], b[known_step]
    by_cell = np.argsort(cell, kind="stable")
    cell, cum, b = cell[by_cell], cum[by_cell], b[by_cell]
    size = n_cats * n_steps
    seen = np.zeros(size, dtype=bool)
    last = np.zeros(size, dtype=np.int64)
    high = np.full(size, -np.inf)
    counts = {c: np.zeros(size, dtype=np.int64) for c in
              ("alloc_count", "alloc_bytes", "free_count", "free_bytes")}
    if len(cell):
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
        ends = np.r_[starts[1:], len(cell)] - 1
        cells = cell[starts]
        seen[cells] = True
        last[cells] = cum[ends]
        high[cells] = np.maximum.reduceat(cum, starts)
        counts["alloc_count"][cells] = np.add.reduceat((b > 0).astype(np.int64), starts)
        counts["alloc_bytes"][cells] = np.add.reduceat(np.where(b > 0, b, 0), starts)
        counts["free_count"][cells] = np.add.reduceat((b < 0).astype(np.int64), starts)
        counts["free_bytes"][cells] = np.add.reduceat(np.where(b < 0, -b, 0), starts)
    # live: the last value carried forward over steps without events (0 before any)
    seen2, last2 = seen.reshape(n_cats, n_steps), last.reshape(n_cats, n_steps)
    filled = np.where(seen2, np.arange(n_steps), -1)
    np.maximum.accumulate(filled, axis=1, out=filled)
    live = np.where(filled >= 0, np.take_along_axis(last2, np.maximum(filled, 0), axis=1), 0)
    before = np.zeros_like(live)
    before[:, 1:] = live[:, :-1]
    peak = np.maximum(before.ravel().astype(np.float64), high)
    out = pd.DataFrame({
        "step": grid.get_level_values("step"), "view": view,
        "category": grid.get_level_values("cat"), "live_bytes": live.ravel(),
        "peak_bytes": peak.astype(np.int64), **counts,
        "pool_hits": None, "pool_misses": None})
    return out[list(MEMORY_COLUMNS)]


def pool_rows(step: int, pool_stats: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    """``memory_by_category.csv`` rows (view "pool") from a workspace's ``pool_stats()``."""
    rows = []
    for cat, st in sorted(pool_stats.items()):
        rows.append({
            "step": step, "view": "pool", "category": cat,
            "live_bytes": st.get("live_bytes"), "peak_bytes": st.get("peak_bytes"),
            "alloc_count": st.get("acquisitions"), "alloc_bytes": st.get("held_bytes"),
            "free_count": st.get("releases"), "free_bytes": None,
            "pool_hits": st.get("hits"), "pool_misses": st.get("misses"),
        })
    return rows


def attribution_check(events: pd.DataFrame, category: str, device: str,
                      tolerance_bytes: int) -> dict[str, Any]:
    """Sum over categories of signed bytes vs the allocator's own total change, for one device.

    allocator_total_bytes = total_allocated after the last event - total_allocated
    before the first event (= first event's total - its bytes). ``ok`` when they
    differ by at most ``tolerance_bytes``.
    """
    ev = events[events["device"] == device].sort_values("ts_us", kind="stable")
    if ev.empty:
        return {"device": device, "events": 0, "sum_categories_bytes": 0,
                "allocator_total_bytes": 0, "tolerance_bytes": tolerance_bytes, "ok": True,
                "by_category": {}}
    by_cat = ev.groupby(category)["bytes"].sum()
    total = int(ev["total_allocated"].iloc[-1]
                - (ev["total_allocated"].iloc[0] - ev["bytes"].iloc[0]))
    summed = int(by_cat.sum())
    return {"device": device, "events": int(len(ev)), "sum_categories_bytes": summed,
            "allocator_total_bytes": total, "tolerance_bytes": tolerance_bytes,
            "ok": abs(summed - total) <= tolerance_bytes,
            "by_category": {str(k): int(v) for k, v in by_cat.items()}}


def measured_steps_needed(min_steps: int = 20, settle_fraction: float = 0.25) -> int:
    """Fewest measured steps that leave ``min_steps`` after the settling fraction is cut."""
    n = min_steps
    while n - int(n * settle_fraction) < min_steps:
        n += 1
    return n


def memory_growth(steps_df: pd.DataFrame, *, min_steps: int = 20, settle_fraction: float = 0.25,
                  abs_threshold_bytes: float = 1 << 20, rel_threshold: float = 0.01
                  ) -> dict[str, Any]:
    """Memory growth per step over the measured (non-warm-up) steps, with a leak verdict.

    Metric: ``allocated_bytes`` when recorded (the allocator: exact), else
    ``rss_bytes`` (process RSS: noisier). The first ``settle_fraction`` of the
    measured steps is left out as settling time (caching allocator and malloc
    arenas grow early, then plateau; a leak keeps growing). Output keys:
    - metric: the column used; steps: steps in the fitted range;
    - start_bytes / end_bytes: median of the first / last quarter of that range;
    - growth_bytes_per_step: least-squares slope of the metric over the step index;
    - growth_bytes_total: slope * (last step - first step) of the range;
    - threshold_bytes: max(abs_threshold_bytes, rel_threshold * start_bytes);
    - verdict: "leak" when both the fitted total growth and the last-minus-first
      quarter difference exceed the threshold, "stable" otherwise,
      "insufficient data" under ``min_steps`` steps in the range;
    - steps_needed: measured steps a verdict needs (``measured_steps_needed``).
    """
    df = steps_df
    if "phase" in df:
        df = df[df["phase"] == "measured"]
    metric = "allocated_bytes"
    if metric not in df or df[metric].isna().all():
        metric = "rss_bytes"
    df = df.dropna(subset=[metric]) if metric in df else df.iloc[0:0]
    df = df.sort_values("step").iloc[int(len(df) * settle_fraction):]
    out: dict[str, Any] = {"metric": metric, "steps": int(len(df)), "start_bytes": None,
                           "end_bytes": None, "growth_bytes_per_step": None,
                           "growth_bytes_total": None, "threshold_bytes": None,
                           "verdict": "insufficient data",
                           "steps_needed": measured_steps_needed(min_steps, settle_fraction)}
    if len(df) < min_steps:
        return out
    x = df["step"].to_numpy(dtype=np.float64)
    y = df[metric].to_numpy(dtype=np.float64)
    slope = float(np.polyfit(x, y, 1)[0])
    q = max(1, len(df) // 4)
    start, end = float(np.median(y[:q])), float(np.median(y[-q:]))
    threshold = max(abs_threshold_bytes, rel_threshold * start)
    total = slope * (x[-1] - x[0])
    leak = total > threshold and (end - start) > threshold
    out.update(start_bytes=start, end_bytes=end, growth_bytes_per_step=slope,
               growth_bytes_total=total, threshold_bytes=threshold,
               verdict="leak" if leak else "stable")
    return out
