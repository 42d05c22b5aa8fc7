"""``python -m profiler view runs/<name>``: one self-contained HTML page of a run.

The page needs no network: its data is embedded as JSON, and the charts are SVG
drawn by the script in ``viewer_assets`` (no external script, font or style).
Sections: run summary and host load, the memory timeline of the trace window
stacked by category (region and role views, like PyTorch's memory_viz), step
times by step number (warm-up, traced and measured steps told apart), the top
operators of the trace window, and NVML curves when the run sampled a GPU.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from profiler.analyze.timeline import memory_timeline
from profiler.parse.run import load_run
from profiler.render.viewer_assets import CSS, SCRIPT
from profiler.rundir import ALLOCATIONS_CSV, atomic_write_text

VIEW_HTML = "view.html"
TOP_OPERATORS = 20


def _clean(value: Any) -> Any:
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _columns(frame: pd.DataFrame | None, columns: list[str]) -> dict[str, list]:
    if frame is None or frame.empty:
        return {}
    return {c: frame[c].tolist() for c in columns if c in frame.columns}


def view_data(run_dir: Path | str) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data."""
    run = load_run(run_dir)
    meta = run.meta
    device = meta.get("device") or {}
    main = "cpu" if device.get("type") != "cuda" else f"cuda:{device.get('index') or 0}"
    timelines = {}
    alloc_file = Path(run_dir) / ALLOCATIONS_CSV
    if alloc_file.is_file():
        allocations = pd.read_csv(alloc_file, low_memory=False)
        for view in ("region", "role"):
            t = memory_timeline(allocations, view, main)
            if not t.empty:
                cats = [c for c in t.columns if c not in ("t_ms", "step", "total")]
                timelines[view] = {"t_ms": t["t_ms"].round(3).tolist(),
                                   "step": t["step"].tolist(),
                                   "total": t["total"].tolist(),
                                   "categories": {c: t[c].tolist() for c in cats}}
    steps = run.steps.copy()
    for column in ("traced", "instrumented"):
        if column not in steps.columns:
            steps[column] = None
    ops = run.operators
    operators = {}
    if ops is not None and not ops.empty:
        top = ops.sort_values("self_us", ascending=False).head(TOP_OPERATORS)
        operators = {"name": top["name"].tolist(), "count": top["count"].tolist(),
                     "self_ms": (top["self_us"] / 1e3).tolist(),
                     "total_ms": (top["total_us"] / 1e3).tolist()}
    nvml = _columns(run.nvml, ["ts", "gpu", "used_bytes", "total_bytes", "util_gpu_pct",
                               "power_w", "temperature_c"])
    config = meta.get("config") or {}
    data = {
        "name": meta.get("name"), "status": meta.get("status"), "device": device,
        "config": {k: config.get(k) for k in ("preset", "variant", "mode", "pool")},
        "started_at": meta.get("started_at"), "timings": meta.get("timings") or {},
        "memory_growth": meta.get("memory_growth") or {},
        "host_load": meta.get("host_load") or {}, "trace": meta.get("trace") or {},
        "nvml_reason": (meta.get("nvml") or {}).get("reason"),
        "steps": _columns(steps, ["step", "phase", "traced", "instrumented", "wall_ms",
                                  "allocated_bytes", "peak_bytes"]),
        "timelines": timelines, "operators": operators, "nvml": nvml,
    }
    return _clean(data)


def render_view(data: dict[str, Any]) -> str:
    """The page: static skeleton + embedded JSON + the drawing script."""
    payload = json.dumps(data, allow_nan=False).replace("<", "\\u003c")
    title = escape(f"Run {data.get('name')}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>{title}</title><style>{CSS}</style></head>
<body>
<h1>{title}</h1>
<div id="summary"></div>
<h2>Memory of the trace window, stacked by category</h2>
<p class="note">Tensor bytes live since the window began, charged to the category that
allocated each block (the torch.profiler memory events of the traced steps).
<span id="view-buttons"></span></p>
<div id="memory" class="chart"></div><p id="memory-summary" class="note"></p>
<h2>Step times</h2><div id="steps" class="chart"></div><p id="steps-summary" class="note"></p>
<h2>Top operators of the trace window (self CPU time)</h2><div id="operators"></div>
<h2>NVML</h2><div id="nvml" class="chart"></div><p id="nvml-summary" class="note"></p>
<script id="run-data" type="application/json">{payload}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def write_view(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write the page (atomically) into the run directory, or to ``out``; returns its path."""
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / VIEW_HTML
    atomic_write_text(target, render_view(view_data(run_dir)))
    return target
