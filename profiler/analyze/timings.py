"""Run summaries from steps.csv rows (pure): step-time statistics and the paired
light-vs-bare overhead. Times in milliseconds, rates per second."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any


def step_timings(rows: Iterable[Mapping[str, Any]], measure_overhead: bool) -> dict[str, Any]:
    """run.json ``timings`` from steps rows: step_ms_median / step_ms_mean over the measured,
    untraced (and, with ``measure_overhead``, instrumented) steps; traced_step_ms_median over
    the measured traced ones; samples_per_s = samples / wall time of the same steps (None
    when the workload reports no samples); ``overhead`` (``paired_overhead``) with
    ``measure_overhead``."""
    rows = list(rows)
    out: dict[str, Any] = {}
    measured = [r for r in rows if r["phase"] == "measured" and not r.get("traced")
                and (r.get("instrumented") or not measure_overhead)]
    traced = [r["wall_ms"] for r in rows if r["phase"] == "measured" and r.get("traced")]
    if traced:
        out["traced_step_ms_median"] = statistics.median(traced)
    if measured:
        walls = [r["wall_ms"] for r in measured]
        samples = sum(r.get("samples") or 0 for r in measured)
        out["step_ms_median"] = statistics.median(walls)
        out["step_ms_mean"] = statistics.fmean(walls)
        reported = any(r.get("samples") is not None for r in measured)
        out["samples_per_s"] = samples * 1000.0 / sum(walls) if sum(walls) and reported else None
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
