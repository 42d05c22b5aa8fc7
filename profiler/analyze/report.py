"""The report facade: two loaded runs -> every table the renderers need (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from profiler.analyze import categories, load, metadata, metrics, nvml, operators, ranks
from profiler.analyze.memory import memory_growth
from profiler.analyze.stats import WORSE, StatsConfig
from profiler.analyze.steps import measured_mask, measured_rule
from profiler.errors import NotComparableError
from profiler.parse.run import Run

SIDES = ("base", "new")


@dataclass(frozen=True)
class ReportConfig:
    stats: StatsConfig = field(default_factory=StatsConfig)
    top_operators: int = 15
    force: bool = False  # compare runs that are not comparable


@dataclass(frozen=True)
class Report:
    names: dict[str, str]  # side -> run name
    paths: dict[str, str]
    statuses: dict[str, str]
    summary: pd.DataFrame  # metrics.SUMMARY_COLUMNS
    metadata: pd.DataFrame  # metadata.METADATA_COLUMNS
    operators: pd.DataFrame  # operators.OPERATOR_DELTA_COLUMNS
    operators_per_step: bool  # operator times are per traced step (else over the window)
    pool: pd.DataFrame  # categories.POOL_COLUMNS
    nvml_reconcile: dict[str, pd.DataFrame]  # side -> nvml.RECONCILE_COLUMNS
    nvml_notes: dict[str, str]  # side -> why NVML is unavailable ("" when available)
    growth: dict[str, dict[str, Any]]  # side -> analyze.memory.memory_growth() result
    timelines: dict[str, pd.DataFrame]  # side -> region peak bytes per step (category_timeline)
    warmup_steps: dict[str, int]
    skipped_steps: dict[str, int]  # measured steps skipped as non-finite
    step_times: dict[str, pd.DataFrame]  # side -> measured steps: columns step, wall_ms
    measured_rules: dict[str, str]  # side -> which steps are measured, in words
    load: pd.DataFrame  # analyze.load.LOAD_COLUMNS
    load_problem: str  # why timing verdicts may not be trusted ("" when quiet)
    device_type: str  # cpu | cuda (of the base run)
    peaks: pd.DataFrame  # index category, columns base / new: region peak bytes
    warnings: tuple[str, ...]
    not_comparable: tuple[str, ...]  # problems overridden by force
    unrecorded: tuple[str, ...]  # metrics neither run recorded (left out of the summary)
    stats: StatsConfig
    # multi-rank runs (analyze.ranks): side -> per-rank table, straggler verdict, top
    # collectives; the 1-rank vs N-rank scaling figures (None for equal rank counts)
    ranks: dict[str, pd.DataFrame] = field(default_factory=dict)
    stragglers: dict[str, dict[str, Any]] = field(default_factory=dict)
    collectives: dict[str, pd.DataFrame] = field(default_factory=dict)
    scaling: dict[str, Any] | None = None
    nonfinite: dict[str, int] = field(default_factory=dict)  # side -> NaN / inf cells left out


# Per-step metrics of multi-rank runs (analyze.ranks.per_step), gated.
RANK_METRICS = (
    metrics.MetricSpec("distributed", "communication share of step time", "comm_share_pct",
                       "%", gated=True),
    metrics.MetricSpec("distributed", "straggler ratio (slowest / median rank compute)",
                       "straggler_ratio", "x", gated=True),
)

def build_report(base: Run, new: Run, config: ReportConfig) -> Report:
    """Compare ``base`` and ``new``; raises NotComparableError unless ``config.force``."""
    problems = metadata.comparability_problems(base.meta, new.meta)
    if problems and not config.force:
        raise NotComparableError(
            f"runs {base.name} and {new.name} are not comparable: " + "; ".join(problems)
            + " (use --force to compare anyway)")
    runs = {"base": base, "new": new}
    samples = {s: metrics.step_samples(r.steps) for s, r in runs.items()}
    cats = {s: metrics.category_samples(r.memory, r.steps) for s, r in runs.items()}
    region_peaks = {s: categories.category_peaks(r.memory, r.steps) for s, r in runs.items()}
    base_peaks = {}
    for view in metrics.VIEWS:
        for cat, value in categories.category_peaks(base.memory, base.steps, view).items():
            base_peaks[f"{view}/{cat}"] = float(value)
    cuda = any((r.meta.get("device") or {}).get("type") == "cuda" for r in runs.values())
    step_specs = [m for m in metrics.STEP_METRICS if cuda or not m.cuda_only]
    summary = pd.concat([
        metrics.compare_metrics(step_specs, samples["base"], samples["new"], config.stats),
        metrics.compare_metrics(
            metrics.category_specs(list(cats["base"].columns), list(cats["new"].columns),
                                   base_peaks),
            cats["base"], cats["new"], config.stats),
        _nvml_metrics(base, new, config.stats),
        *_rank_metrics(base, new, config.stats),
    ], ignore_index=True)
    absent = summary["base"].isna() & summary["new"].isna()
    unrecorded = tuple(summary.loc[absent, "metric"])
    summary = summary[~absent].reset_index(drop=True)
    summary = load.downgrade_timing(summary, base.meta, new.meta, samples)
    problem = load.load_problem(base.meta, new.meta)
    warnings = [*base.warnings, *new.warnings]
    if problem:
        warnings.append(problem)
    if problems:
        warnings.append("runs are not comparable (compared with --force): " + "; ".join(problems))
    b_traced, n_traced = _traced_steps(base.meta), _traced_steps(new.meta)
    traced = {"base": b_traced, "new": n_traced}
    tables = {s: ranks.rank_table(r.rank_steps or {0: r.steps}, r.rank_records,
                                  r.rank_operators, traced[s]) for s, r in runs.items()}
    return Report(
        names={s: r.name for s, r in runs.items()},
        paths={s: str(r.path) for s, r in runs.items()},
        statuses={s: r.status for s, r in runs.items()},
        summary=summary,
        metadata=metadata.metadata_diff(base.meta, new.meta),
        operators=operators.operator_deltas(base.operators, new.operators, b_traced, n_traced,
                                            top=config.top_operators),
        operators_per_step=bool(b_traced and n_traced),
        pool=categories.pool_summary(base.memory, base.steps, new.memory, new.steps),
        nvml_reconcile={s: nvml.reconcile(r.nvml) for s, r in runs.items()},
        nvml_notes={s: _nvml_note(r) for s, r in runs.items()},
        growth={s: _growth(r) for s, r in runs.items()},
        timelines={s: categories.category_timeline(r.memory, "region", "peak_bytes")
                   for s, r in runs.items()},
        warmup_steps={s: int((r.steps["phase"] == "warmup").sum()) for s, r in runs.items()},
        skipped_steps={s: int(pd.to_numeric(r.measured["skipped"], errors="coerce").fillna(0)
                              .gt(0).sum()) for s, r in runs.items()},
        step_times={s: samples[s][["step", "wall_ms"]].reset_index(drop=True) for s in SIDES},
        measured_rules={s: measured_rule(r.steps) for s, r in runs.items()},
        load=load.load_table(base.meta, new.meta, samples),
        load_problem=problem,
        device_type=str((base.meta.get("device") or {}).get("type")),
        peaks=pd.DataFrame({"base": region_peaks["base"], "new": region_peaks["new"]}),
        warnings=tuple(warnings),
        not_comparable=tuple(problems),
        unrecorded=unrecorded,
        stats=config.stats,
        ranks=tables,
        stragglers={s: ranks.straggler(t) for s, t in tables.items()},
        collectives={s: ranks.top_collectives(r.rank_operators) for s, r in runs.items()},
        scaling=ranks.scaling(tables["base"], tables["new"]),
        nonfinite={s: r.nonfinite for s, r in runs.items()},
    )


def regressions(summary: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Gated rows that are worse beyond noise by more than ``threshold`` (a fraction, 0.05
    for 5%) in their bad direction. Same columns as the summary."""
    worse = summary[(summary["verdict"] == WORSE) & summary["gated"]]
    change = np.where(worse["lower_is_better"], worse["ratio"] - 1, 1 - worse["ratio"])
    return worse[change > threshold]


def _nvml_metrics(base: Run, new: Run, stats: StatsConfig) -> pd.DataFrame:
    tables = {}
    for side, run in (("base", base), ("new", new)):
        usable = nvml.usable_samples(run.nvml)
        columns = {}
        if not usable.empty:
            for gpu, group in usable.groupby(usable["gpu"].astype(str)):
                for field_ in ("used_bytes", "process_bytes", "power_w"):
                    columns[f"{gpu}/{field_}"] = group[field_].reset_index(drop=True)
        tables[side] = pd.DataFrame(columns)
    keys = sorted({c for t in tables.values() for c in t.columns})
    units = {"used_bytes": ("bytes", "NVML peak used"),
             "process_bytes": ("bytes", "NVML peak process memory"),
             "power_w": ("W", "NVML peak power")}
    specs = []
    for key in keys:
        gpu, field_ = key.split("/", 1)
        unit, label = units[field_]
        specs.append(metrics.MetricSpec("nvml", f"{label} [gpu {gpu}]", key, unit,
                                        statistic="max"))
    return metrics.compare_metrics(specs, tables["base"], tables["new"], stats)


def _rank_metrics(base: Run, new: Run, stats: StatsConfig) -> list[pd.DataFrame]:
    """Communication share (%) and straggler ratio per step, when a run has 2+ ranks."""
    if max(len(base.rank_steps), len(new.rank_steps)) < 2:
        return []
    frames = {}
    for side, run in (("base", base), ("new", new)):
        f = ranks.per_step(run.rank_steps or {0: run.steps})
        f["comm_share_pct"] = 100.0 * f["comm_share"]
        frames[side] = f
    return [metrics.compare_metrics(RANK_METRICS, frames["base"], frames["new"], stats)]


def _traced_steps(meta: dict[str, Any]) -> int | None:
    schedule = (meta.get("trace") or {}).get("schedule") or {}
    active, repeat = schedule.get("active"), schedule.get("repeat")
    if isinstance(active, int) and isinstance(repeat, int) and active > 0 and repeat > 0:
        return active * repeat
    return None


def _nvml_note(run: Run) -> str:
    info = run.meta.get("nvml") or {}
    if info.get("available"):
        return ""
    return str(info.get("reason") or "NVML not available")


def _growth(run: Run) -> dict[str, Any]:
    """Memory growth as the run computed it (run.json ``memory_growth``, one computation);
    runs without it get the same function on the same measured steps."""
    recorded = run.meta.get("memory_growth")
    if isinstance(recorded, dict) and recorded.get("verdict"):
        return recorded
    return memory_growth(run.steps[measured_mask(run.steps)])
