"""torch.profiler trace json(.gz) -> DataFrames, parsed once.

``read_trace(path)`` loads the Chrome-trace json that ``tensorboard_trace_handler``
writes; ``parse_trace(trace)`` splits it into:

- ``ops``: cpu_op spans — name, tid, ts_us, dur_us, end_us;
- ``annotations``: user_annotation spans (``record_function`` scopes, ``ProfilerStep#N``
  and the collector's phase markers) — same columns;
- ``memory``: the ``[memory]`` instant events — ts_us, tid, bytes (signed: > 0
  allocation, < 0 free), total_allocated (allocator total after the event),
  device ("cpu" | "cuda:N"), addr.

``attribute_memory(frames)`` adds, per memory event: ``step`` (the ProfilerStep
span containing it, else the previous one), ``op`` (innermost cpu_op on the same
thread containing it), and ``region``: the innermost ``energy_flow.<region>``
scope on the same thread containing it; an event on a thread with no enclosing
region scope (the autograd engine's device threads) that falls inside an
``energy_flow.backward`` window is ``backward``; everything else is ``other``.
Containment is inclusive at both ends. Times are trace microseconds.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from energy_flow.regions import region_of
from profiler.rundir import OTHER_REGION

STEP_PREFIX = "ProfilerStep#"
PHASE_MARK_PREFIX = "profiler.phase_end."
_SPAN_COLUMNS = ["name", "tid", "ts_us", "dur_us", "end_us"]


@dataclass
class TraceFrames:
    ops: pd.DataFrame
    annotations: pd.DataFrame
    memory: pd.DataFrame
    metadata: dict[str, Any]


def read_trace(path: Path | str) -> dict[str, Any]:
    """The trace json as a dict (``.json`` or ``.json.gz``)."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _device(device_type: int, device_id: int) -> str:
    # c10::DeviceType: 0 = CPU, 1 = CUDA
    if device_type == 1:
        return f"cuda:{max(device_id, 0)}"
    return "cpu" if device_type == 0 else f"device{device_type}:{device_id}"


def _spans(events: list[dict[str, Any]]) -> pd.DataFrame:
    if not events:
        return pd.DataFrame(columns=_SPAN_COLUMNS)
    df = pd.DataFrame({
        "name": [e["name"] for e in events],
        "tid": [e.get("tid") for e in events],
        "ts_us": np.array([e["ts"] for e in events], dtype=np.float64),
        "dur_us": np.array([e.get("dur", 0.0) for e in events], dtype=np.float64),
    })
    df["end_us"] = df["ts_us"] + df["dur_us"]
    return df


def parse_trace(trace: dict[str, Any]) -> TraceFrames:
    ops, notes, mem = [], [], []
    for e in trace.get("traceEvents", ()):
        cat = e.get("cat")
        if cat == "cpu_op" and e.get("ph") == "X":
            ops.append(e)
        elif cat == "user_annotation" and e.get("ph") == "X":
            notes.append(e)
        elif e.get("name") == "[memory]":
            mem.append(e)
    args = [e.get("args", {}) for e in mem]
    memory = pd.DataFrame({
        "ts_us": np.array([e["ts"] for e in mem], dtype=np.float64),
        "tid": [e.get("tid") for e in mem],
        "bytes": np.array([a.get("Bytes", 0) for a in args], dtype=np.int64),
        "total_allocated": np.array([a.get("Total Allocated", 0) for a in args], dtype=np.int64),
        "device": [_device(a.get("Device Type", 0), a.get("Device Id", -1)) for a in args],
        "addr": np.array([a.get("Addr", 0) for a in args], dtype=np.uint64).astype(np.int64),
    })
    memory = memory.sort_values("ts_us", kind="stable").reset_index(drop=True)
    metadata = {k: v for k, v in trace.items() if k != "traceEvents"}
    return TraceFrames(_spans(ops), _spans(notes), memory, metadata)


def innermost(starts: np.ndarray, ends: np.ndarray, labels: list[Any],
              points: np.ndarray) -> list[Any]:
    """For each point, the label of the innermost (latest-starting) span containing it, or None.

    Spans must nest (as scopes on one thread do). One sweep: O((n + m) log(n + m)).
    """
    result: list[Any] = [None] * len(points)
    if len(starts) == 0 or len(points) == 0:
        return result
    order = np.lexsort((-ends, starts))  # by start, longer (outer) first on ties
    s_sorted, e_sorted = starts[order].tolist(), ends[order].tolist()
    l_sorted = [labels[i] for i in order]
    p_order = np.argsort(points, kind="stable").tolist()
    pts = points.tolist()
    stack: list[tuple[float, Any]] = []
    k, n = 0, len(s_sorted)
    for pi in p_order:
        t = pts[pi]
        while k < n and s_sorted[k] <= t:
            while stack and stack[-1][0] < s_sorted[k]:
                stack.pop()
            stack.append((e_sorted[k], l_sorted[k]))
            k += 1
        while stack and stack[-1][0] < t:
            stack.pop()
        if stack:
            result[pi] = stack[-1][1]
    return result


def _windows_contain(starts: np.ndarray, ends: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Boolean per point: inside any of the (non-overlapping) windows."""
    if len(starts) == 0:
        return np.zeros(len(points), dtype=bool)
    order = np.argsort(starts)
    s, e = starts[order], ends[order]
    idx = np.searchsorted(s, points, side="right") - 1
    ok = idx >= 0
    inside = np.zeros(len(points), dtype=bool)
    inside[ok] = points[ok] <= e[idx[ok]]
    return inside


def step_spans(annotations: pd.DataFrame) -> pd.DataFrame:
    """ProfilerStep spans: step (int), ts_us, end_us; sorted by time."""
    steps = annotations[annotations["name"].str.startswith(STEP_PREFIX)].copy()
    steps["step"] = steps["name"].str[len(STEP_PREFIX):].astype(int)
    return steps.sort_values("ts_us")[["step", "ts_us", "end_us"]].reset_index(drop=True)


def attribute_memory(frames: TraceFrames) -> pd.DataFrame:
    """The memory events with ``step``, ``op`` and ``region`` columns (see module docstring)."""
    mem = frames.memory.copy()
    points = mem["ts_us"].to_numpy()
    steps = step_spans(frames.annotations)
    if len(steps):
        idx = np.searchsorted(steps["ts_us"].to_numpy(), points, side="right") - 1
        mem["step"] = steps["step"].to_numpy()[np.clip(idx, 0, None)]
    else:
        mem["step"] = -1
    mem["op"] = ""
    mem["region"] = OTHER_REGION
    notes = frames.annotations
    regions = notes.assign(region=notes["name"].map(region_of)).dropna(subset=["region"])
    for tid, group in mem.groupby("tid", sort=False):
        where = group.index.to_numpy()
        p = group["ts_us"].to_numpy()
        ops = frames.ops[frames.ops["tid"] == tid]
        op = innermost(ops["ts_us"].to_numpy(), ops["end_us"].to_numpy(),
                       ops["name"].tolist(), p)
        mem.loc[where, "op"] = [o or "" for o in op]
        reg = regions[regions["tid"] == tid]
        inner = innermost(reg["ts_us"].to_numpy(), reg["end_us"].to_numpy(),
                          reg["region"].tolist(), p)
        mem.loc[where, "region"] = [r or OTHER_REGION for r in inner]
    backward = regions[regions["region"] == "backward"]
    in_backward = _windows_contain(backward["ts_us"].to_numpy(), backward["end_us"].to_numpy(),
                                   points)
    mem.loc[(mem["region"] == OTHER_REGION).to_numpy() & in_backward, "region"] = "backward"
    return mem


def phase_marks(annotations: pd.DataFrame) -> pd.DataFrame:
    """The collector's phase-end markers: step, phase (forward|backward|optimizer), ts_us."""
    marks = annotations[annotations["name"].str.startswith(PHASE_MARK_PREFIX)]
    parts = marks["name"].str[len(PHASE_MARK_PREFIX):].str.split("#", expand=True)
    if marks.empty:
        return pd.DataFrame(columns=["step", "phase", "ts_us"])
    return pd.DataFrame({"step": parts[1].astype(int).to_numpy(), "phase": parts[0].to_numpy(),
                         "ts_us": marks["ts_us"].to_numpy()}).sort_values("ts_us")
