"""Top operators by change in time between two runs (pure; input operators.csv)."""

from __future__ import annotations

import numpy as np
import pandas as pd

OPERATOR_DELTA_COLUMNS = (
    "name",
    "base_count", "new_count",        # calls per traced step
    "base_self_us", "new_self_us",    # self CPU time per traced step (us)
    "delta_self_us",                  # new - base (us)
    "base_total_us", "new_total_us",  # total (inclusive) CPU time per traced step (us)
    "delta_total_us",
    "base_self_device_us", "new_self_device_us",  # self device (CUDA) time per traced step
    "delta_self_device_us",
    "ratio_self",                     # new_self_us / base_self_us (nan if base is 0)
)


def operator_deltas(base: pd.DataFrame | None, new: pd.DataFrame | None,
                    base_steps: int | None = None, new_steps: int | None = None,
                    top: int = 15) -> pd.DataFrame:
    """The ``top`` operators by |delta| of self time (device time when either run has
    it, else CPU), normalized per traced step when the step counts are given.

    An operator missing from one run counts as 0 there. Columns:
    ``OPERATOR_DELTA_COLUMNS``.
    """
    if (base is None or base.empty) and (new is None or new.empty):
        return pd.DataFrame(columns=list(OPERATOR_DELTA_COLUMNS))
    b = _per_step(base, base_steps)
    n = _per_step(new, new_steps)
    merged = b.add_prefix("base_").join(n.add_prefix("new_"), how="outer").fillna(0.0)
    for field in ("self_us", "total_us", "self_device_us"):
        merged[f"delta_{field}"] = merged[f"new_{field}"] - merged[f"base_{field}"]
    with np.errstate(divide="ignore", invalid="ignore"):
        merged["ratio_self"] = (merged["new_self_us"] / merged["base_self_us"]).where(
            merged["base_self_us"] > 0)
    uses_device = (merged[["base_self_device_us", "new_self_device_us"]] > 0).any().any()
    key = "delta_self_device_us" if uses_device else "delta_self_us"
    order = merged[key].abs().sort_values(ascending=False, kind="stable").index
    merged = merged.loc[order].head(top).reset_index().rename(columns={"index": "name"})
    return merged[list(OPERATOR_DELTA_COLUMNS)]


def _per_step(table: pd.DataFrame | None, steps: int | None) -> pd.DataFrame:
    fields = ["count", "self_us", "total_us", "self_device_us"]
    if table is None or table.empty:
        return pd.DataFrame(columns=fields, dtype="float64")
    grouped = table.groupby(table["name"].astype(str))[fields].sum(min_count=1).fillna(0.0)
    grouped.index.name = None
    if steps and steps > 0:
        grouped = grouped / steps
    return grouped.astype("float64")
