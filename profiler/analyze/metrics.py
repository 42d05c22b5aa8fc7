"""Per-step samples of two runs -> one comparison row per metric.

Two kinds of metric (column ``kind``):
- **timed** (step time, throughput, RSS, process heap): noisy; compared with a
  bootstrap interval against a noise threshold (``analyze.stats``).
- **exact** (tensor allocations and bytes per step, tensor memory at step end and
  its peaks, per-category memory of the trace window, flows per step):
  deterministic for the same config and seed. Compared step by step on the step
  numbers both runs measured: equal means ``equal``; any difference is a verdict
  (better / worse, or ``changed`` for work metrics without a direction) with its
  size, however few steps there are.

Output of ``compare_metrics`` (one row per metric, the report's summary table):

=============== ===================================================================
column          meaning (unit)
=============== ===================================================================
section         time | throughput | memory | work | category | allocations | nvml
metric          display name, e.g. "step time", "peak [region/carrier]"
unit            ms | samples/s | bytes | count (per step) | W
statistic       median | p90 | max (max: one number per run, no interval)
kind            timed | exact
base, new       the statistic of each run (in ``unit``)
delta           new - base (in ``unit``)
ratio           new / base (1.0 when both are 0; inf when only base is 0)
ci_low, ci_high bootstrap confidence interval of ``ratio`` (timed rows with enough
                samples; nan otherwise)
noise_pct       noise threshold t of this row in percent (0 for exact rows)
verdict         better | worse | within noise | equal | changed | n/a
rule            the rule that gave the verdict, in words, with this row's numbers
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
    BETTER,
    NOISE,
    WORSE,
    Comparison,
    StatsConfig,
    compare_samples,
    noise_threshold,
    ratio_of,
    statistic,
    verdict,
)
from profiler.analyze.steps import measured_mask, per_step_throughput

SUMMARY_COLUMNS = (
    "section", "metric", "unit", "statistic", "kind", "base", "new", "delta", "ratio",
    "ci_low", "ci_high", "noise_pct", "verdict", "rule", "gated", "lower_is_better",
    "n_base", "n_new",
)
EQUAL, CHANGED = "equal", "changed"
TIMED, EXACT = "timed", "exact"
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
    exact: bool = False  # deterministic: compared step by step, no noise threshold
    directional: bool = True  # False: a change is "changed", neither better nor worse
    cuda_only: bool = False  # meaningless on CPU (left out when both runs are on CPU)


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
    MetricSpec("memory", "peak tensor memory", "peak_bytes", "bytes", statistic="max",
               noisy=False, gated=True, exact=True),
    MetricSpec("memory", "step peak tensor memory", "peak_bytes", "bytes", noisy=False,
               exact=True),
    MetricSpec("memory", "tensor memory at step end", "allocated_bytes", "bytes",
               noisy=False, exact=True),
    MetricSpec("memory", "tensor allocations per step", "alloc_count", "count", noisy=False,
               exact=True),
    MetricSpec("memory", "tensor bytes allocated per step", "alloc_bytes", "bytes",
               noisy=False, exact=True),
    MetricSpec("memory", "peak reserved (CUDA caching allocator)", "reserved_bytes", "bytes",
               statistic="max", noisy=False, gated=True, cuda_only=True),
    MetricSpec("memory", "peak process RSS", "rss_bytes", "bytes", statistic="max"),
    MetricSpec("memory", "process heap in use (all C allocations)", "heap_bytes", "bytes",
               statistic="max"),
    MetricSpec("work", "flows created per step", "flows_created", "count", noisy=False,
               exact=True, directional=False),
    MetricSpec("work", "flow-steps per step", "flow_steps", "count", noisy=False, exact=True,
               directional=False),
    MetricSpec("work", "lattice steps per step", "steps_taken", "count", noisy=False,
               exact=True, directional=False),
)


def step_samples(steps: pd.DataFrame) -> pd.DataFrame:
    """The measured rows of steps.csv (``analyze.steps.measured_mask``) with derived
    columns: ``other_ms`` (wall minus forward, backward and optimizer, ms),
    ``samples_per_s`` and, when the run reports ``flow_steps``, ``flow_steps_per_s``
    (per second of the step's wall time, the one throughput formula of
    ``analyze.steps``). Keeps ``step``."""
    out = steps[measured_mask(steps)].copy()
    parts = out[["forward_ms", "backward_ms", "optimizer_ms"]].sum(axis=1, min_count=3)
    out["other_ms"] = out["wall_ms"] - parts
    out["samples_per_s"] = per_step_throughput(out["samples"], out["wall_ms"])
    if "flow_steps" in out.columns:  # only workloads that report flows (energy_flow)
        out["flow_steps_per_s"] = per_step_throughput(out["flow_steps"], out["wall_ms"])
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
    return wide.sort_index().reset_index()


def category_specs(base_cols: list[str], new_cols: list[str],
                   base_peaks: dict[str, float] | None = None) -> list[MetricSpec]:
    """Metric specs for the categories present in either run, region view first and the
    largest categories (by base peak) first within a view."""
    keys = {c.rsplit("/", 1)[0] for c in [*base_cols, *new_cols] if "/" in c}
    peaks = base_peaks or {}

    def order(key: str) -> tuple[int, float, str]:
        view = key.split("/", 1)[0]
        rank = VIEWS.index(view) if view in VIEWS else len(VIEWS)
        return rank, -peaks.get(key, 0.0), key

    specs = []
    for key in sorted(keys, key=order):
        pool = key.startswith("pool/")  # pool statistics: not the allocator's events
        specs.append(MetricSpec("category", f"peak [{key}]", f"{key}/peak_bytes", "bytes",
                                statistic="max", noisy=False, gated=True, exact=not pool))
    for key in sorted(keys, key=order):
        pool = key.startswith("pool/")
        specs.append(MetricSpec("allocations", f"allocations per step [{key}]",
                                f"{key}/alloc_count", "count", noisy=False, exact=not pool))
        specs.append(MetricSpec("allocations", f"bytes allocated per step [{key}]",
                                f"{key}/alloc_bytes", "bytes", noisy=False, exact=not pool))
    return specs


def compare_metrics(specs: list[MetricSpec] | tuple[MetricSpec, ...], base: pd.DataFrame,
                    new: pd.DataFrame, config: StatsConfig) -> pd.DataFrame:
    """One row per spec (columns documented in the module docstring); a spec whose column
    neither table has (a metric only some workloads report) gives no row. Tables with a
    ``step`` column let exact metrics be compared step by step."""
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
                             float("nan"), "n/a", "recorded by one run only", b, n))
            continue
        if spec.exact:
            rows.append(_exact_row(spec, base, new, b, n))
            continue
        if single:  # one number per run: no interval
            b_max, n_max = float(np.nanmax(b)), float(np.nanmax(n))
            cmp = Comparison(b_max, n_max, ratio_of(b_max, n_max), float("nan"), float("nan"))
        else:
            cmp = compare_samples(b, n, q, config)
        threshold = noise_threshold(b, n, spec.noisy, config)
        v = verdict(cmp.ratio, cmp.ci_low, cmp.ci_high, threshold, spec.lower_is_better,
                    single_value=single)
        floor = ""
        if spec.unit == "bytes":
            floor = f"; differences under {config.min_bytes:,} bytes are noise"
            if abs(cmp.new - cmp.base) < config.min_bytes:
                v = NOISE
        if spec.unit == "ms":
            floor = f"; differences under {config.min_ms:g} ms are noise"
            if abs(cmp.new - cmp.base) < config.min_ms:
                v = NOISE
        rows.append(_row(spec, cmp.base, cmp.new, cmp.ratio, cmp.ci_low, cmp.ci_high,
                         100.0 * threshold, v, _rule(spec, threshold, cmp, config) + floor,
                         b, n))
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _rule(spec: MetricSpec, t: float, cmp: Comparison, config: StatsConfig) -> str:
    """The noise rule of a timed row in words, with its threshold t as numbers."""
    lo, hi = 1 / (1 + t), 1 + t
    good, bad = (f"< {lo:.3f}", f"> {hi:.3f}") if spec.lower_is_better else \
        (f"> {hi:.3f}", f"< {lo:.3f}")
    if spec.statistic == "max":
        return (f"one value per run: better when new/base {good}, worse when new/base {bad} "
                f"(t = {100 * t:.1f}%)")
    if np.isnan(cmp.ci_low):
        return (f"fewer than {config.min_samples} samples in a run: no interval, so within "
                f"noise")
    return (f"better when new/base {good} and the interval is on that side of 1, worse when "
            f"new/base {bad} likewise (t = {100 * t:.1f}%)")


def _exact_row(spec: MetricSpec, base: pd.DataFrame, new: pd.DataFrame, b: np.ndarray,
               n: np.ndarray) -> dict:
    """Step-by-step comparison of a deterministic metric on the steps both runs measured."""
    nan = float("nan")
    if "step" in base.columns and "step" in new.columns:
        bs = pd.Series(b, index=pd.to_numeric(base["step"]).to_numpy()).dropna()
        ns = pd.Series(n, index=pd.to_numeric(new["step"]).to_numpy()).dropna()
        common = bs.index.intersection(ns.index)
    else:
        bs, ns, common = pd.Series(b).dropna(), pd.Series(n).dropna(), pd.Index([])
    if len(common):
        bv, nv = bs.loc[common].to_numpy(), ns.loc[common].to_numpy()
        where = f"the {len(common)} step(s) both runs measured"
    else:
        bv, nv = bs.to_numpy(), ns.to_numpy()
        where = "each run's own steps (no step measured by both)"
    if spec.statistic == "max":
        b_stat, n_stat = float(np.max(bv)), float(np.max(nv))
    else:
        b_stat, n_stat = float(np.median(bv)), float(np.median(nv))
    same = len(bv) == len(nv) and bool(np.array_equal(bv, nv))
    ratio = ratio_of(b_stat, n_stat)
    if same:
        v = EQUAL
    elif not spec.directional:
        v = CHANGED
    else:
        diff = n_stat - b_stat
        if diff == 0 and len(bv) == len(nv):
            diff = float(np.sum(nv) - np.sum(bv))
        if diff == 0:
            v = CHANGED
        else:
            v = WORSE if (diff > 0) == spec.lower_is_better else BETTER
    rule = (f"exact (deterministic): compared step by step on {where}; equal when every "
            f"step is equal, otherwise " + ("better or worse by the change of the "
                                            f"{spec.statistic}" if spec.directional
                                            else "changed (work done differs)"))
    return _row(spec, b_stat, n_stat, ratio, nan, nan, 0.0, v, rule, b, n)


def _row(spec: MetricSpec, b: float, n: float, ratio: float, lo: float, hi: float,
         noise_pct: float, v: str, rule: str, bs: np.ndarray | None,
         ns: np.ndarray | None) -> dict:
    metric = f"{spec.metric} (p90)" if spec.statistic == "p90" else spec.metric
    return {
        "section": spec.section, "metric": metric, "unit": spec.unit,
        "statistic": spec.statistic, "kind": EXACT if spec.exact else TIMED,
        "base": b, "new": n, "delta": n - b, "ratio": ratio,
        "ci_low": lo, "ci_high": hi, "noise_pct": noise_pct, "verdict": v, "rule": rule,
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
