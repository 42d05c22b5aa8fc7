"""Per-category tables for plots and the pool section (pure; input memory_by_category.csv)."""

from __future__ import annotations

import pandas as pd

POOL_COLUMNS = ("category", "base_hits", "base_misses", "base_hit_rate", "new_hits",
                "new_misses", "new_hit_rate")


def category_timeline(memory: pd.DataFrame | None, view: str = "region",
                      value: str = "live_bytes") -> pd.DataFrame:
    """Index ``step``; one column per category of ``view``; values ``value`` (bytes) summed
    per step. Every step of the run, warm-up included. Empty when there is no data."""
    if memory is None or memory.empty:
        return pd.DataFrame()
    rows = memory[memory["view"] == view]
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(index="step", columns="category", values=value, aggfunc="sum")
    table.columns = [str(c) for c in table.columns]
    return table.sort_index()


def category_peaks(memory: pd.DataFrame | None, steps: pd.DataFrame,
                   view: str = "region") -> pd.Series:
    """Per category of ``view``: the largest ``peak_bytes`` over the measured steps (bytes)."""
    if memory is None or memory.empty:
        return pd.Series(dtype="float64")
    measured = steps.loc[steps["phase"] == "measured", "step"]
    rows = memory[(memory["view"] == view) & memory["step"].isin(measured)]
    if rows.empty:
        return pd.Series(dtype="float64")
    per_step = rows.groupby(["step", "category"])["peak_bytes"].sum()
    peaks = per_step.groupby(level="category").max()
    peaks.index = peaks.index.astype(str)
    return peaks.sort_values(ascending=False)


def pool_summary(base: pd.DataFrame | None, base_steps: pd.DataFrame,
                 new: pd.DataFrame | None, new_steps: pd.DataFrame) -> pd.DataFrame:
    """Pool hits / misses summed over the measured steps, per pool category, both runs.

    Columns: ``POOL_COLUMNS``; hit rate = hits / (hits + misses) in [0, 1] (nan if none).
    Empty when neither run has a pool view.
    """
    sides = [_pool_totals(base, base_steps), _pool_totals(new, new_steps)]
    if all(s.empty for s in sides):
        return pd.DataFrame(columns=list(POOL_COLUMNS))
    merged = sides[0].add_prefix("base_").join(sides[1].add_prefix("new_"), how="outer")
    for side in ("base", "new"):
        for col in ("hits", "misses"):
            if f"{side}_{col}" not in merged:
                merged[f"{side}_{col}"] = float("nan")
        total = merged[f"{side}_hits"] + merged[f"{side}_misses"]
        merged[f"{side}_hit_rate"] = (merged[f"{side}_hits"] / total).where(total > 0)
    merged = merged.reset_index().rename(columns={"index": "category"})
    return merged[list(POOL_COLUMNS)]


def _pool_totals(memory: pd.DataFrame | None, steps: pd.DataFrame) -> pd.DataFrame:
    if memory is None or memory.empty:
        return pd.DataFrame(columns=["hits", "misses"])
    measured = steps.loc[steps["phase"] == "measured", "step"]
    rows = memory[(memory["view"] == "pool") & memory["step"].isin(measured)]
    if rows.empty:
        return pd.DataFrame(columns=["hits", "misses"])
    totals = rows.groupby("category")[["pool_hits", "pool_misses"]].sum(min_count=1)
    totals.index = totals.index.astype(str)
    totals.index.name = "category"
    return totals.rename(columns={"pool_hits": "hits", "pool_misses": "misses"})
