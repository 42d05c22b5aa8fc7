"""Which steps are measured, and the figures computed from them: one definition for
run.json, the CLI summary, TensorBoard scalars and the report.

A step is **measured** when all of these hold (columns of steps.csv):
- ``phase`` is ``measured`` (warm-up steps are out);
- ``traced`` is 0 or absent (torch.profiler warming up or recording slows a step);
- ``instrumented`` is 1 or absent (the bare steps of a ``--measure-overhead`` run are
  the reference for the overhead figure, not samples of the instrumented run).
If a run has no untraced measured step at all (every measured step was traced), the
traced measured steps are used, and ``measured_rule`` says so.

Throughput has one formula: ``samples * 1000 / wall_ms`` of each measured step, and
the run's figure is the median of those per-step values (``samples_per_s``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def _flag(steps: pd.DataFrame, column: str, default: float) -> pd.Series:
    if column not in steps.columns:
        return pd.Series(default, index=steps.index, dtype=float)
    return pd.to_numeric(steps[column], errors="coerce").fillna(default)


def measured_mask(steps: pd.DataFrame) -> pd.Series:
    """Boolean Series over ``steps`` rows: the measured steps (module docstring)."""
    base = (steps["phase"] == "measured") & (_flag(steps, "instrumented", 1) != 0)
    untraced = base & (_flag(steps, "traced", 0) == 0)
    return untraced if untraced.any() else base


def measured_rule(steps: pd.DataFrame) -> str:
    """The rule in words, as it applied to this run."""
    base = (steps["phase"] == "measured") & (_flag(steps, "instrumented", 1) != 0)
    parts = ["warm-up steps out"]
    if (_flag(steps, "traced", 0) != 0).any():
        parts.append("traced steps out" if (base & (_flag(steps, "traced", 0) == 0)).any()
                     else "traced steps kept (no untraced measured step)")
    if (_flag(steps, "instrumented", 1) == 0).any():
        parts.append("bare steps of the overhead run out")
    return ", ".join(parts)


def per_step_throughput(samples: Any, wall_ms: Any) -> Any:
    """samples per second of one step (or element-wise over arrays); NaN without time."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.asarray(samples, dtype=np.float64)
        w = np.asarray(wall_ms, dtype=np.float64)
        out = np.where(w > 0, s * 1000.0 / w, np.nan)
    return out if out.ndim else float(out)


def summary(steps: pd.DataFrame) -> dict[str, Any]:
    """Timing figures of the measured steps: step_ms_median, step_ms_mean, samples_per_s
    (median of per-step throughput), measured_steps, traced_step_ms_median, measured_rule."""
    out: dict[str, Any] = {"measured_steps": 0, "measured_rule": measured_rule(steps)}
    traced = steps[(steps["phase"] == "measured") & (_flag(steps, "traced", 0) != 0)]
    if len(traced):
        out["traced_step_ms_median"] = float(np.median(traced["wall_ms"].astype(float)))
    rows = steps[measured_mask(steps)]
    if rows.empty:
        return out
    wall = rows["wall_ms"].to_numpy(dtype=np.float64)
    out["measured_steps"] = int(len(rows))
    out["step_ms_median"] = float(np.median(wall))
    out["step_ms_mean"] = float(np.mean(wall))
    if "samples" in rows:
        tp = per_step_throughput(rows["samples"].to_numpy(dtype=np.float64), wall)
        tp = tp[np.isfinite(tp)]
        out["samples_per_s"] = float(np.median(tp)) if tp.size else None
    return out
