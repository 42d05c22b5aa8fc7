"""Per-step samples of two runs -> one comparison row per metric.

Output of ``compare_metrics`` (one row per metric, the report's summary table):

=============== ===================================================================
column          meaning (unit)
=============== ===================================================================
section         time | throughput | memory | category | allocations
metric          display name, e.g. "step time", "peak allocated [region/carrier]"
unit            ms | samples/s | flow-steps/s | bytes | count (per step)
statistic       median | p90 | max (max: one number per run, no interval)
base, new       the statistic of each run (in ``unit``)
delta           new - base (in ``unit``)
ratio           new / base (1.0 when both are 0; inf when only base is 0)
ci_low, ci_high bootstrap confidence interval of ``ratio`` (nan for ``max`` rows
                and with too few samples)
noise_pct       noise threshold of this metric in percent (see ``analyze.stats``)
verdict         better | worse | within noise | n/a (metric missing in one run);
                bytes metrics that differ by less than ``min_bytes``, and ms metrics
                that differ by less than ``min_ms``, are within noise
gated           True for metrics ``--fail-on-regression`` checks
lower_is_better direction of "better"
n_base, n_new   number of per-step samples behind the statistic
=============== ===================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from profiler.analyze.stats import (
    NOISE,
    Comparison,
    StatsConfig,
    compare_samples,
    noise_threshold,
    ratio_of,
    statistic,
    verdict,
)

SUMMARY_COLUMNS = (
    "section", "metric", "unit", "statistic", "base", "new", "delta", "ratio", "ci_low",
    "ci_high", "noise_pct", "verdict", "gated", "lower_is_better", "n_base", "n_new",
)
_QUANTILE = {"median": 0.5, "p90": 0.9, "max": 1.0}
VIEWS = ("region", "role", "pool")


@dataclass(frozen=True)
class MetricSpec:
    section: str
    metric: str
    column: str  # column of the per-step sample table
    unit: str
    statistic: str = "median"  # median | p90 | max
    lower_is_better: bool = True
    noisy: bool = True  # timing-like (adaptive threshold) vs deterministic
    gated: bool = False


STEP_METRICS = (
    MetricSpec("time", "step time", "wall_ms", "ms", gated=True),
    MetricSpec("time", "step time", "wall_ms", "ms", statistic="p90", gated=True),
    MetricSpec("time", "forward", "forward_ms", "ms"),
    MetricSpec("time", "backward", "backward_ms", "ms"),
    MetricSpec("time", "optimizer", "optimizer_ms", "ms"),
    MetricSpec("time", "other (step - parts)", "other_ms", "ms"),
    MetricSpec("throughput", "samples per second", "samples_per_s", "samples/s",
               lower_is_better=False),
    MetricSpec("throughput", "flow-steps per second", "flow_steps_per_s", "flow-steps/s",
               lower_is_better=False),
    MetricSpec("memory", "peak allocated", "peak_bytes", "bytes", statistic="max",
               noisy=False, gated=True),
    MetricSpec("memory", "step peak allocated", "peak_bytes", "bytes", noisy=False),
    MetricSpec("memory", "peak reserved", "reserved_bytes", "bytes", statistic="max",
               noisy=False, gated=True),
    MetricSpec("memory", "allocated at step end", "allocated_bytes", "bytes", noisy=False),
    MetricSpec("memory", "peak process RSS", "rss_bytes", "bytes", statistic="max"),
)


def untraced(steps: pd.DataFrame) -> pd.Series:
    """Rows not slowed by torch.profiler: the optional ``traced`` column of steps.csv is 0
    or empty (all rows when the column is absent)."""
    if "traced" not in steps.columns:
        return pd.Series(True, index=steps.index)
    return pd.to_numeric(steps["traced"], errors="coerce").fillna(0) == 0


def step_samples(steps: pd.DataFrame) -> pd.DataFrame:
    """Measured rows of steps.csv with derived columns, warm-up excluded and, when any
    untraced measured step exists, the steps torch.profiler traced too (they are slower).

    Adds ``other_ms`` (wall minus forward, backward and optimizer, ms),
    ``samples_per_s`` and, when the run reports ``flow_steps``, ``flow_steps_per_s``
    (per second of wall time).
    """
    measured = steps["phase"] == "measured"
    if (measured & untraced(steps)).any():
        measured &= untraced(steps)
    out = steps[measured].copy()
    parts = out[["forward_ms", "backward_ms", "optimizer_ms"]].sum(axis=1, min_count=3)
    out["other_ms"] = out["wall_ms"] - parts
    seconds = out["wall_ms"] / 1000.0
    with np.errstate(divide="ignore", invalid="ignore"):
        out["samples_per_s"] = (out["samples"] / seconds).where(seconds > 0)
        if "flow_steps" in out.columns:  # only workloads that report flows (energy_flow)
            out["flow_steps_per_s"] = (out["flow_steps"] / seconds).where(seconds > 0)
    return out.reset_index(drop=True)


def category_samples(memory: pd.DataFrame | None, steps: pd.DataFrame) -> pd.DataFrame:
    """memory_by_category.csv of the measured steps, one row per step, one column per
    ``<view>/<category>/<field>`` for fields peak_bytes, alloc_count, alloc_bytes."""
    if memory is None or memory.empty:
        return pd.DataFrame()
    measured = set(steps.loc[steps["phase"] == "measured", "step"].tolist())
    rows = memory[memory["step"].isin(measured)]
    if rows.empty:
        return pd.DataFrame()
    wide = rows.pivot_table(index="step", columns=["view", "category"],
                            values=["peak_bytes", "alloc_count", "alloc_bytes"], aggfunc="sum")
    wide.columns = [f"{view}/{cat}/{field}" for field, view, cat in wide.columns]
    return wide.sort_index().reset_index(drop=True)


def category_specs(base_cols: list[str], new_cols: list[str],
                   base_peaks: dict[str, float] | None = None) -> list[MetricSpec]:
    """Metric specs for the categories present in either run, region view first and the
    largest categories (by base peak) first within a view."""
    keys = {c.rsplit("/", 1)[0] for c in [*base_cols, *new_cols]}
    peaks = base_peaks or {}

    def order(key: str) -> tuple[int, float, str]:
        view = key.split("/", 1)[0]
        rank = VIEWS.index(view) if view in VIEWS else len(VIEWS)
        return rank, -peaks.get(key, 0.0), key

    specs = []
    for key in sorted(keys, key=order):
        specs.append(MetricSpec("category", f"peak [{key}]", f"{key}/peak_bytes", "bytes",
                                statistic="max", noisy=False, gated=True))
    for key in sorted(keys, key=order):
        specs.append(MetricSpec("allocations", f"allocations per step [{key}]",
                                f"{key}/alloc_count", "count", noisy=False))
        specs.append(MetricSpec("allocations", f"bytes allocated per step [{key}]",
                                f"{key}/alloc_bytes", "bytes", noisy=False))
    return specs


def compare_metrics(specs: list[MetricSpec] | tuple[MetricSpec, ...], base: pd.DataFrame,
                    new: pd.DataFrame, config: StatsConfig) -> pd.DataFrame:
    """One row per spec (columns documented in the module docstring); a spec whose column
    neither table has (a metric only some workloads report) gives no row."""
    rows = []
    for spec in specs:
        if spec.column not in base.columns and spec.column not in new.columns:
            continue
        b = _column(base, spec.column)
        n = _column(new, spec.column)
        single = spec.statistic == "max"
        q = _QUANTILE[spec.statistic]
        if b is None or n is None or not np.isfinite(b).any() or not np.isfinite(n).any():
            b_stat = float(np.nanmax(b)) if single and b is not None and _any(b) \
                else statistic(b, q)
            n_stat = float(np.nanmax(n)) if single and n is not None and _any(n) \
                else statistic(n, q)
            rows.append(_row(spec, b_stat, n_stat, float("nan"), float("nan"), float("nan"),
                             float("nan"), "n/a", b, n))
            continue
        if single:  # one number per run: no interval
            b_max, n_max = float(np.nanmax(b)), float(np.nanmax(n))
            cmp = Comparison(b_max, n_max, ratio_of(b_max, n_max), float("nan"), float("nan"))
        else:
            cmp = compare_samples(b, n, q, config)
        threshold = noise_threshold(b, n, spec.noisy, config)
        v = verdict(cmp.ratio, cmp.ci_low, cmp.ci_high, threshold, spec.lower_is_better,
                    single_value=single)
        if spec.unit == "bytes" and abs(cmp.new - cmp.base) < config.min_bytes:
            v = NOISE
        if spec.unit == "ms" and abs(cmp.new - cmp.base) < config.min_ms:
            v = NOISE
        rows.append(_row(spec, cmp.base, cmp.new, cmp.ratio, cmp.ci_low, cmp.ci_high,
                         100.0 * threshold, v, b, n))
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _row(spec: MetricSpec, b: float, n: float, ratio: float, lo: float, hi: float,
         noise_pct: float, v: str, bs: np.ndarray | None, ns: np.ndarray | None) -> dict:
    metric = f"{spec.metric} (p90)" if spec.statistic == "p90" else spec.metric
    return {
        "section": spec.section, "metric": metric, "unit": spec.unit,
        "statistic": spec.statistic, "base": b, "new": n, "delta": n - b, "ratio": ratio,
        "ci_low": lo, "ci_high": hi, "noise_pct": noise_pct, "verdict": v,
        "gated": spec.gated, "lower_is_better": spec.lower_is_better,
        "n_base": _count(bs), "n_new": _count(ns),
    }


def _column(table: pd.DataFrame, column: str) -> np.ndarray | None:
    if column not in table.columns:
        return None
    return pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)


def _any(values: np.ndarray | None) -> bool:
    return values is not None and bool(np.isfinite(values).any())


def _count(values: np.ndarray | None) -> int:
    return 0 if values is None else int(np.isfinite(values).sum())
