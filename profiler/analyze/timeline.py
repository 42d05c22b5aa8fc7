"""The memory timeline of a trace window, stacked by category (pure).

Input: allocations.csv rows (``profiler.rundir.ALLOCATION_COLUMNS``, plus the
extension column ``owner_region`` when present) of one device. Each event's
signed bytes are charged to the category owning its block (``owner_region`` for
the region view, ``role`` for the role view; both already follow the ownership
rule of ``analyze.memory``), so the categories' live bytes add up, at every
event, to the allocator's change since the window began (a category can go below
zero when the window frees blocks allocated before it).

Output of ``memory_timeline``: one row per kept instant, columns ``t_ms`` (ms since
the window's first event), ``step``, ``total`` (bytes, sum of categories) and one
column per category (bytes live since the window began). At most ``max_points``
rows: the instant of each bucket's highest total is kept, so peaks survive.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

VIEW_COLUMNS = {"region": ("owner_region", "region"), "role": ("role",)}


def view_column(allocations: pd.DataFrame, view: str) -> str | None:
    """The allocations.csv column holding ``view``'s owning category, if recorded."""
    for column in VIEW_COLUMNS[view]:
        if column in allocations.columns and allocations[column].notna().any():
            return column
    return None


def memory_timeline(allocations: pd.DataFrame, view: str, device: str = "cpu",
                    max_points: int = 1500) -> pd.DataFrame:
    column = view_column(allocations, view)
    ev = allocations[allocations["device"].astype(str) == device] if len(allocations) else \
        allocations
    if column is None or ev.empty:
        return pd.DataFrame(columns=["t_ms", "step", "total"])
    ev = ev.sort_values("ts_us", kind="stable")
    cats = ev[column].fillna("other").astype(str)
    signed = pd.to_numeric(ev["bytes"], errors="coerce").fillna(0).to_numpy(dtype=np.float64)
    wide = pd.DataFrame(0.0, index=np.arange(len(ev)), columns=sorted(cats.unique()))
    for cat in wide.columns:
        wide[cat] = np.where(cats.to_numpy() == cat, signed, 0.0)
    live = wide.cumsum()
    total = live.sum(axis=1).to_numpy()
    keep = _keep(total, max_points)
    ts = ev["ts_us"].to_numpy(dtype=np.float64)
    out = live.iloc[keep].reset_index(drop=True)
    out.insert(0, "total", total[keep])
    out.insert(0, "step", ev["step"].to_numpy()[keep])
    out.insert(0, "t_ms", (ts[keep] - ts[0]) / 1e3)
    order = live.max().sort_values(ascending=False).index.tolist()
    return out[["t_ms", "step", "total", *order]]


def _keep(total: np.ndarray, max_points: int) -> np.ndarray:
    n = total.size
    if n <= max_points:
        return np.arange(n)
    edges = np.linspace(0, n, max_points // 2 + 1).astype(int)
    keep = {0, n - 1}
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b > a:
            keep.add(b - 1)
            keep.add(a + int(np.argmax(total[a:b])))
    return np.array(sorted(keep))
