"""Report plots as PNG bytes (matplotlib Agg, no pyplot global state)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_MIB = 2**20
_COLORS = {"base": "#4c72b0", "new": "#dd8452"}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def memory_over_steps(timelines: dict[str, pd.DataFrame], names: dict[str, str],
                      warmup: dict[str, int]) -> bytes | None:
    """Peak bytes per region category within each step, one panel per run (None without
    data). Warm-up steps (steps 0 .. warmup - 1) are shaded where the data covers them."""
    sides = [s for s in ("base", "new") if not timelines.get(s, pd.DataFrame()).empty]
    if not sides:
        return None
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, len(sides), sharey=True, squeeze=False)[0]
    # one colour per category in both panels, largest categories first in the legend
    largest = pd.concat([timelines[s].max() for s in sides], axis=1).max(axis=1)
    order = list(largest.sort_values(ascending=False).index)
    styles = {c: (f"C{i % 10}", "-" if i < 10 else "--") for i, c in enumerate(order)}
    for ax, side in zip(axes, sides, strict=True):
        table = timelines[side]
        marker = "o" if len(table) <= 30 else None
        for category in (c for c in order if c in table):
            colour, line = styles[category]
            ax.plot(table.index, table[category] / _MIB, label=str(category), linewidth=1.4,
                    color=colour, linestyle=line, marker=marker, markersize=3)
        if warmup.get(side) and table.index.min() < warmup[side]:
            ax.axvspan(table.index.min() - 0.5, warmup[side] - 0.5, color="0.9",
                       label="warm-up")
        ax.set_title(f"{side}: {names[side]} (trace window)", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("peak tensor MiB within the step")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _png(fig)


def step_time_distribution(step_times: dict[str, pd.DataFrame],
                           names: dict[str, str]) -> bytes | None:
    """Measured step times (``step``, ``wall_ms`` columns): against the run's real step
    numbers (left) and as histograms (right)."""
    frames = {s: f[np.isfinite(f["wall_ms"].to_numpy(dtype=float))]
              for s, f in step_times.items()}
    data = {s: f["wall_ms"].to_numpy(dtype=float) for s, f in frames.items()}
    if not any(v.size for v in data.values()):
        return None
    fig = Figure(figsize=(11, 3.6))
    left, right = fig.subplots(1, 2)
    both = np.concatenate([v for v in data.values() if v.size])
    bins = np.linspace(both.min(), both.max(), 31) if both.max() > both.min() else 10
    for side, values in data.items():
        if not values.size:
            continue
        label = f"{side}: {names[side]}"
        left.plot(frames[side]["step"].to_numpy(), values, color=_COLORS[side], label=label,
                  linewidth=1, marker="o" if values.size <= 40 else None, markersize=3)
        right.hist(values, bins=bins, alpha=0.55, color=_COLORS[side], label=label)
        right.axvline(np.median(values), color=_COLORS[side], linestyle="--", linewidth=1.2)
    left.set_xlabel("step (warm-up and traced steps left out)")
    left.set_ylabel("step time (ms)")
    right.set_xlabel("step time (ms); dashed: median")
    right.set_ylabel("steps")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def category_peak_bars(peaks: pd.DataFrame, names: dict[str, str]) -> bytes | None:
    """Peak bytes per region category, base and new side by side (None without data)."""
    if peaks.empty:
        return None
    table = peaks.fillna(0.0) / _MIB
    fig = Figure(figsize=(8, 0.45 * len(table) + 1.6))
    ax = fig.subplots()
    y = np.arange(len(table))
    height = 0.4
    for offset, side in ((-height / 2, "base"), (height / 2, "new")):
        if side in table:
            ax.barh(y + offset, table[side], height=height, color=_COLORS[side],
                    label=f"{side}: {names[side]}")
    ax.set_yticks(y, [str(c) for c in table.index])
    ax.invert_yaxis()
    ax.set_xlabel("peak MiB within a measured step")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def report_plots(report) -> dict[str, bytes]:
    """name -> PNG bytes for every plot that has data."""
    plots = {
        "memory_over_steps": memory_over_steps(report.timelines, report.names,
                                               report.warmup_steps),
        "step_time": step_time_distribution(report.step_times, report.names),
        "category_peaks": category_peak_bars(report.peaks, report.names),
    }
    from profiler.render.ranks import rank_plot

    plots["ranks"] = rank_plot(getattr(report, "ranks", {}), report.names)
    return {name: png for name, png in plots.items() if png is not None}
