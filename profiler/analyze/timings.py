"""Run summaries from steps.csv rows (pure): run.json ``timings`` and the paired
light-vs-bare overhead. Times in milliseconds, rates per second. Which steps count and
the throughput formula are ``profiler.analyze.steps``'s (the one definition)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from profiler.analyze import steps as step_rules


def steps_frame(rows: Iterable[Mapping[str, Any]], measure_overhead: bool) -> pd.DataFrame:
    """steps rows as a frame for ``analyze.steps``: ``instrumented`` kept only in a
    ``measure_overhead`` run (elsewhere a bare run's rows are all its samples)."""
    df = pd.DataFrame.from_records(list(rows))
    if not measure_overhead and "instrumented" in df.columns:
        df = df.drop(columns="instrumented")
    return df


def step_timings(rows: Iterable[Mapping[str, Any]], measure_overhead: bool) -> dict[str, Any]:
    """run.json ``timings`` from steps rows: ``analyze.steps.summary`` of the measured steps
    (step_ms_median, step_ms_mean, samples_per_s, measured_steps, measured_rule,
    traced_step_ms_median; figures a run cannot give are left out) and, with
    ``measure_overhead``, ``overhead`` (``paired_overhead``)."""
    rows = list(rows)
    out: dict[str, Any] = {}
    if rows:
        summary = step_rules.summary(steps_frame(rows, measure_overhead))
        out.update({k: v for k, v in summary.items() if v is not None})
    if measure_overhead:
        out["overhead"] = paired_overhead(rows)
    return out


def paired_overhead(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
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
