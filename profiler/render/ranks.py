"""The report's multi-rank section: per-rank table and plot, straggler verdict,
communication share and top collectives, memory per rank, 1-rank vs N-rank scaling."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from profiler.render.format import MISSING, fmt_pct, fmt_ratio, fmt_value

RANK_HEADERS = ["rank", "host", "status", "steps", "step", "compute", "comm", "comm share",
                "overlap", "comm (trace)", "overlap (trace)", "flow-steps", "samples", "peak allocated", "peak RSS"]


def rank_rows(table: pd.DataFrame) -> list[list[str]]:
    rows = []
    for r in table.itertuples():
        rows.append([str(r.rank), str(r.host or MISSING), str(r.status or MISSING),
                     str(r.steps), fmt_value(r.step_ms, "ms"), fmt_value(r.compute_ms, "ms"),
                     fmt_value(r.comm_ms, "ms"), fmt_pct(r.comm_share_pct),
                     fmt_pct(r.overlap_pct), fmt_value(r.trace_comm_ms, "ms"),
                     fmt_pct(r.trace_overlap_pct),
                     fmt_value(r.flow_steps, "count"),
                     fmt_value(r.samples, "count"), fmt_value(r.peak_bytes, "bytes"),
                     fmt_value(r.rss_bytes, "bytes")])
    return rows


def straggler_text(name: str, s: dict[str, Any]) -> str:
    if s["verdict"] == "n/a":
        return f"{name}: one rank, no straggler verdict."
    return (f"{name}: {s['verdict']} - slowest rank {s['slowest_rank']} computes "
            f"{s['slowest_ms']:.1f} ms per step against the median rank's "
            f"{s['median_ms']:.1f} ms ({fmt_ratio(s['ratio'])}; a straggler above "
            f"{s['threshold']:.2f}x).")


def scaling_text(sc: dict[str, Any], names: dict[str, str]) -> str:
    return (f"Scaling {names['base']} ({sc['ranks_base']} rank(s)) -> {names['new']} "
            f"({sc['ranks_new']} ranks), same per-rank batch: median step "
            f"{sc['step_ms_base']:.1f} -> {sc['step_ms_new']:.1f} ms, throughput "
            f"{sc['samples_per_s_base']:.1f} -> {sc['samples_per_s_new']:.1f} samples/s "
            f"(speedup {fmt_ratio(sc['speedup'])}), scaling efficiency "
            f"{fmt_pct(100.0 * sc['efficiency'])} (speedup / rank ratio; 100% = perfect "
            f"weak scaling).")


def rank_plot(tables: dict[str, pd.DataFrame], names: dict[str, str]) -> bytes | None:
    """Median compute and communication time per rank, one panel per run with 2+ ranks."""
    from profiler.render.plots import _png

    sides = [s for s in ("base", "new") if len(tables.get(s, pd.DataFrame())) >= 2]
    if not sides:
        return None
    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, len(sides), squeeze=False)[0]
    for ax, side in zip(axes, sides, strict=True):
        t = tables[side]
        x = np.arange(len(t))
        compute = t["compute_ms"].fillna(0).to_numpy()
        comm = t["step_ms"].fillna(0).to_numpy() - compute
        ax.bar(x, compute, color="#4c72b0", label="compute (median)")
        ax.bar(x, comm, bottom=compute, color="#dd8452", label="waiting for communication")
        ax.set_xticks(x, [f"rank {r}" for r in t["rank"]])
        ax.set_ylabel("ms per step")
        ax.set_title(f"{side}: {names[side]}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
