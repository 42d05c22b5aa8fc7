"""torch.profiler trace json(.gz) -> DataFrames, parsed once.

``read_frames(path)`` reads the Chrome-trace json that ``tensorboard_trace_handler``
writes, taking only the events below (the native scanner ``profiler.parse.fastscan``, else
the regular expressions of ``profiler.parse.scan``, else a full orjson load);
``parse_trace(read_trace(path))`` gives the same from the full document. Both split the trace into:

- ``ops``: cpu_op spans — name, tid, ts_us, dur_us, end_us, seq (autograd sequence
  number, -1 if none), fwd_tid (backward nodes: the thread of their forward op, else -1);
- ``annotations``: user_annotation spans (``record_function`` scopes, ``ProfilerStep#N``
  and the collector's phase markers) — name, tid, ts_us, dur_us, end_us;
- ``memory``: the ``[memory]`` instant events — ts_us, tid, bytes (signed: > 0
  allocation, < 0 free), total_allocated (allocator total after the event),
  device ("cpu" | "cuda:N"), addr.

``attribute_memory(frames, rules)`` adds, per memory event: ``step`` (the ProfilerStep
span containing it, else the previous one), ``op`` (innermost cpu_op on the same
thread containing it), and ``region``: the category of the innermost scope on the same
thread that contains it (``scope_category``: a module scope ``module::<qualified name>``,
a declared region, a ``profiler.profile`` phase, or a user's own ``record_function``
scope). An autograd backward node counts as a scope too: its category is the module
(or user scope) of the forward operator with the same sequence number. An event on a
thread with no enclosing scope (the autograd engine's device threads) that falls inside
a ``backward`` scope's window is ``backward``; everything else is ``other``.
Containment is inclusive at both ends. Times are trace microseconds.
"""

from __future__ import annotations

import gc
import gzip
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from profiler.parse import fastscan
from profiler.parse.scan import scan_events, scan_header
from profiler.rundir import (
    MODULE_SCOPE_PREFIX,
    OPERATOR_COLUMNS,
    OTHER_REGION,
    PHASE_MARK_PREFIX,
    PHASE_SCOPE_PREFIX,
)

_orjson: Any
try:  # a declared dependency; the json fallback keeps a broken install readable
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

STEP_PREFIX = "ProfilerStep#"
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
BACKWARD_NODE_PREFIX = "autograd::engine::evaluate_function: "
# record_function scopes torch itself emits: never categories of their own.
INTERNAL_SCOPE_PREFIXES = (STEP_PREFIX, PHASE_MARK_PREFIX, "Optimizer.", "enumerate(DataLoader)",
                           "## ", "DistributedDataParallel.", "torch.distributed.", "nccl:",
                           "gloo:", "cudaStreamSynchronize", "PyTorch Profiler")
_SPAN_COLUMNS = ["name", "tid", "ts_us", "dur_us", "end_us"]


@dataclass(frozen=True)
class ScopeRules:
    """Which ``record_function`` scopes are categories of the region view.

    ``region_prefix``: a workload's declared region scopes are ``<prefix><region>``
    (energy_flow: ``energy_flow.``) and their category is ``<region>``; ``regions`` lists
    them (shown even at 0 B). With a prefix, only those scopes, module scopes and phase
    scopes count (the workload's own scheme); without one, every user scope counts by its
    name except torch's internal ones (``INTERNAL_SCOPE_PREFIXES``).
    """

    region_prefix: str | None = None
    regions: tuple[str, ...] = ()
    modules: tuple[str, ...] = field(default=())  # module categories (shown even at 0 B)

    def categories(self) -> list[str]:
        """Declared categories, in order, ``other`` last."""
        return list(dict.fromkeys([*self.regions, *self.modules, OTHER_REGION]))

    def to_json(self) -> dict[str, Any]:
        return {"region_prefix": self.region_prefix, "regions": list(self.regions),
                "modules": list(self.modules)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ScopeRules:
        data = data or {}
        return cls(data.get("region_prefix"), tuple(data.get("regions") or ()),
                   tuple(data.get("modules") or ()))


def scope_category(name: str, rules: ScopeRules) -> tuple[str | None, bool]:
    """(category of scope ``name`` or None, whether backward nodes inherit it from forward)."""
    if name.startswith(MODULE_SCOPE_PREFIX):
        return name[len(MODULE_SCOPE_PREFIX):], True
    if name.startswith(PHASE_SCOPE_PREFIX):
        return name[len(PHASE_SCOPE_PREFIX):], False
    if rules.region_prefix:
        if name.startswith(rules.region_prefix):
            region = name[len(rules.region_prefix):]
            if not rules.regions or region in rules.regions:
                return region, False
        return None, False
    if name.startswith(INTERNAL_SCOPE_PREFIXES):
        return None, False
    return name, True


@dataclass
class TraceFrames:
    ops: pd.DataFrame
    annotations: pd.DataFrame
    memory: pd.DataFrame
    metadata: dict[str, Any]
    kernels: pd.DataFrame | None = None  # device activity: ext (External id), dur_us


def read_trace(path: Path | str) -> dict[str, Any]:
    """The trace json as a dict (``.json`` or ``.json.gz``)."""
    path = Path(path)
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    if _orjson is not None:
        return _orjson.loads(raw)
    return json.loads(raw)


def _device(device_type: int, device_id: int) -> str:
    # c10::DeviceType: 0 = CPU, 1 = CUDA
    if device_type == 1:
        return f"cuda:{max(device_id, 0)}"
    return "cpu" if device_type == 0 else f"device{device_type}:{device_id}"


def _span_frame(names: list, tids: list, ts: list, dur: list) -> pd.DataFrame:
    df = pd.DataFrame({"name": names, "tid": tids,
                       "ts_us": np.asarray(ts, dtype=np.float64),
                       "dur_us": np.asarray(dur, dtype=np.float64)})
    df["end_us"] = df["ts_us"] + df["dur_us"]
    return df


def parse_trace(trace: dict[str, Any]) -> TraceFrames:
    """Frames of a trace already loaded as a dict (one pass over its events)."""
    cols: dict[str, list[Any]] = {k: [] for k in (
        "op_name", "op_tid", "op_ts", "op_dur", "op_seq", "op_fwd", "op_ext",
        "an_name", "an_tid", "an_ts", "an_dur",
        "m_ts", "m_tid", "m_bytes", "m_total", "m_dev", "m_addr", "k_ext", "k_dur")}
    for e in trace.get("traceEvents", ()):
        cat = e.get("cat")
        if cat in DEVICE_CATEGORIES:
            if e.get("ph") == "X":
                cols["k_ext"].append((e.get("args") or {}).get("External id", -1))
                cols["k_dur"].append(e.get("dur", 0.0))
        elif cat == "cpu_op":
            if e.get("ph") != "X":
                continue
            a = e.get("args") or {}
            cols["op_name"].append(e["name"])
            cols["op_tid"].append(e.get("tid"))
            cols["op_ts"].append(e["ts"])
            cols["op_dur"].append(e.get("dur", 0.0))
            cols["op_seq"].append(a.get("Sequence number", -1))
            cols["op_fwd"].append(a.get("Fwd thread id", -1))
            cols["op_ext"].append(a.get("External id", -1))
        elif cat == "user_annotation":
            if e.get("ph") != "X":
                continue
            cols["an_name"].append(e["name"])
            cols["an_tid"].append(e.get("tid"))
            cols["an_ts"].append(e["ts"])
            cols["an_dur"].append(e.get("dur", 0.0))
        elif e.get("name") == "[memory]":
            a = e.get("args") or {}
            cols["m_ts"].append(e["ts"])
            cols["m_tid"].append(e.get("tid"))
            cols["m_bytes"].append(a.get("Bytes", 0))
            cols["m_total"].append(a.get("Total Allocated", 0))
            cols["m_dev"].append((a.get("Device Type", 0), a.get("Device Id", -1)))
            cols["m_addr"].append(a.get("Addr", 0))
    metadata = {k: v for k, v in trace.items() if k != "traceEvents"}
    return frames_of_columns(cols, metadata)


def read_frames(path: Path | str) -> TraceFrames:
    """``parse_trace(read_trace(path))``, reading only the needed events: with the native
    scanner (``profiler.parse.fastscan``) where it is built, else with the regular
    expressions of ``profiler.parse.scan`` when the file has Kineto's layout, else (or for
    any input either cannot read) with a full JSON load."""
    path = Path(path)
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    with _gc_paused():
        cols = fastscan.scan(raw)
        if cols is None:
            cols = scan_events(raw)
        header = scan_header(raw) if cols is not None else None
        if cols is None or header is None:
            return parse_trace(_orjson.loads(raw) if _orjson is not None else json.loads(raw))
        return frames_of_columns(cols, header)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a trace's events become tens of thousands of
    tuples and strings (no reference cycles among them): otherwise each few hundred new
    objects start a pass, and the older generations' passes walk every tracked object of
    the process (torch's included). Its previous state is restored."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def frames_of_columns(cols: dict[str, Any], metadata: dict[str, Any]) -> TraceFrames:
    """TraceFrames from the event columns ``parse_trace`` and the scanners collect."""
    ops = _span_frame(cols["op_name"], cols["op_tid"], cols["op_ts"], cols["op_dur"])
    ops["seq"] = np.asarray(cols["op_seq"], dtype=np.int64)
    ops["fwd_tid"] = cols["op_fwd"]
    ops["ext"] = np.asarray(cols["op_ext"], dtype=np.int64)
    kernels = pd.DataFrame({"ext": np.asarray(cols["k_ext"], dtype=np.int64),
                            "dur_us": np.asarray(cols["k_dur"], dtype=np.float64)})
    devices = {key: _device(*key) for key in set(cols["m_dev"])}
    memory = pd.DataFrame({
        "ts_us": np.asarray(cols["m_ts"], dtype=np.float64),
        "tid": cols["m_tid"],
        "bytes": np.asarray(cols["m_bytes"], dtype=np.int64),
        "total_allocated": np.asarray(cols["m_total"], dtype=np.int64),
        "device": [devices[k] for k in cols["m_dev"]],
        "addr": np.asarray(cols["m_addr"], dtype=np.uint64).astype(np.int64),
    })
    memory = memory.sort_values("ts_us", kind="stable").reset_index(drop=True)
    annotations = _span_frame(cols["an_name"], cols["an_tid"], cols["an_ts"], cols["an_dur"])
    return TraceFrames(ops, annotations, memory, metadata, kernels)


def _last_reaching(ends: np.ndarray, pos: np.ndarray, limit: np.ndarray,
                   strict: bool) -> np.ndarray:
    """Per query q, the largest j < pos[q] with ends[j] >= limit[q] (> with ``strict``),
    or -1. A descent over a sparse table of maxima of ``ends``: O((n + m) log n)."""
    table = [ends]  # table[p][i] = max(ends[i : i + 2**p])
    while (1 << len(table)) <= len(ends):
        prev, half = table[-1], 1 << (len(table) - 1)
        table.append(np.maximum(prev[:-half], prev[half:]))
    pos = np.asarray(pos, dtype=np.int64).copy()
    for p in range(len(table) - 1, -1, -1):
        width = 1 << p
        can = np.flatnonzero(pos >= width)
        level = table[p][pos[can] - width]
        short = level <= limit[can] if strict else level < limit[can]
        pos[can[short]] -= width  # every span in the skipped block ends too early
    return pos - 1


def innermost(starts: np.ndarray, ends: np.ndarray, labels: list[Any],
              points: np.ndarray) -> list[Any]:
    """For each point, the label of the innermost (latest-starting) span containing it, or None.

    With the spans ordered by start (longer, outer, first on ties), the answer is the last
    span in that order with start <= point <= end. Vectorized: a binary search finds the
    spans starting at or before each point, then a descent over a sparse table of
    maxima of the ends skips back over the spans that end before it.
    O((n + m) log n), no Python loop per span or point.
    """
    result: list[Any] = [None] * len(points)
    if len(starts) == 0 or len(points) == 0:
        return result
    order = np.lexsort((-ends, starts))  # by start, longer (outer) first on ties
    s_sorted = np.asarray(starts, dtype=np.float64)[order]
    e_sorted = np.asarray(ends, dtype=np.float64)[order]
    pts = np.asarray(points, dtype=np.float64)
    pos = np.searchsorted(s_sorted, pts, side="right")  # spans [0, pos) start at or before
    pos = _last_reaching(e_sorted, pos, pts, strict=False) + 1
    hit = np.flatnonzero(pos > 0)
    spans = order[pos[hit] - 1]
    for i, j in zip(hit.tolist(), spans.tolist(), strict=True):
        result[i] = labels[j]
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


def _scopes(frames: TraceFrames, rules: ScopeRules) -> pd.DataFrame:
    """Category scopes: annotations with a category, plus backward nodes labelled with the
    category of their forward operator. Columns tid, ts_us, end_us, region."""
    notes = frames.annotations
    cats = [scope_category(n, rules) for n in notes["name"].tolist()]
    scopes = notes.assign(region=[c for c, _ in cats], inherit=[i for _, i in cats])
    scopes = scopes.dropna(subset=["region"])
    ops = frames.ops
    heritable = scopes[scopes["inherit"]]
    if ops.empty or heritable.empty or "seq" not in ops.columns:
        return scopes[["tid", "ts_us", "end_us", "region"]]
    is_bwd = ops["name"].str.startswith(BACKWARD_NODE_PREFIX).to_numpy()
    fwd = ops[~is_bwd & (ops["seq"].to_numpy() >= 0)]
    # Sequence numbers count per forward thread; the forward pass runs on one thread in
    # the loops profiled here, so the number alone identifies the node.
    forward_of: dict[int, str] = {}
    for tid, group in fwd.groupby("tid", sort=False):
        sc = heritable[heritable["tid"] == tid]
        labels = innermost(sc["ts_us"].to_numpy(), sc["end_us"].to_numpy(),
                           sc["region"].tolist(), group["ts_us"].to_numpy())
        for seq, label in zip(group["seq"].tolist(), labels, strict=True):
            if label is not None:
                forward_of.setdefault(seq, label)
    bwd = ops[is_bwd & (ops["seq"].to_numpy() >= 0)]
    labels = [forward_of.get(s) for s in bwd["seq"].tolist()]
    nodes = bwd.assign(region=labels).dropna(subset=["region"])
    return pd.concat([scopes[["tid", "ts_us", "end_us", "region"]],
                      nodes[["tid", "ts_us", "end_us", "region"]]], ignore_index=True)


def attribute_memory(frames: TraceFrames, rules: ScopeRules | None = None) -> pd.DataFrame:
    """The memory events with ``step``, ``op`` and ``region`` columns (see module docstring)."""
    rules = rules or ScopeRules()
    mem = frames.memory.copy()
    points = mem["ts_us"].to_numpy()
    steps = step_spans(frames.annotations)
    if len(steps):
        idx = np.searchsorted(steps["ts_us"].to_numpy(), points, side="right") - 1
        mem["step"] = steps["step"].to_numpy()[np.clip(idx, 0, None)]
    else:
        mem["step"] = -1
    op_col = np.full(len(mem), "", dtype=object)
    region_col = np.full(len(mem), OTHER_REGION, dtype=object)
    regions = _scopes(frames, rules)
    for tid, where in mem.groupby("tid", sort=False).indices.items():
        p = points[where]
        ops = frames.ops[frames.ops["tid"] == tid]
        op = innermost(ops["ts_us"].to_numpy(), ops["end_us"].to_numpy(),
                       ops["name"].tolist(), p)
        op_col[where] = [o or "" for o in op]
        reg = regions[regions["tid"] == tid]
        inner = innermost(reg["ts_us"].to_numpy(), reg["end_us"].to_numpy(),
                          reg["region"].tolist(), p)
        region_col[where] = [r or OTHER_REGION for r in inner]
    mem["op"] = op_col
    mem["region"] = region_col
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


def _nesting_sweep(order: np.ndarray, tids: np.ndarray, starts: list[float], ends: list[float],
                   durs: list[float], device: list[float]) -> tuple[list[float], list[float]]:
    """Per span: summed duration of the spans directly inside it, and its device time plus
    that of every span inside it (one stack sweep per thread)."""
    child = [0.0] * len(starts)
    total_device = list(device)
    for tid in pd.unique(tids):
        stack: list[int] = []
        for i in order[tids[order] == tid].tolist():
            start = starts[i]
            while stack and ends[stack[-1]] <= start:
                stack.pop()
            if stack:
                child[stack[-1]] += durs[i]
                if device[i]:
                    for j in stack:
                        total_device[j] += device[i]
            stack.append(i)
    return child, total_device


def operator_table(frames: TraceFrames) -> pd.DataFrame:
    """operators.csv rows (``profiler.rundir.OPERATOR_COLUMNS``) from the parsed trace:
    per name over the window's operators and ``record_function`` scopes (ProfilerStep spans
    and the collector's phase markers left out): count, self_us (own time: duration minus
    the durations of the spans directly inside it on its thread), total_us (duration),
    self_device_us (device activity the operator launched, linked by External id) and
    total_device_us (its own and everything launched inside it). Microseconds, summed;
    sorted by total_us, largest first."""
    ops = frames.ops
    notes = frames.annotations
    keep = ~notes["name"].str.startswith((STEP_PREFIX, PHASE_MARK_PREFIX))
    spans = pd.concat([ops[["name", "tid", "ts_us", "dur_us", "end_us"]],
                       notes.loc[keep, ["name", "tid", "ts_us", "dur_us", "end_us"]]],
                      ignore_index=True)
    device = np.zeros(len(spans))
    kernels = frames.kernels
    if kernels is not None and len(kernels) and "ext" in ops.columns:
        per_ext = kernels.groupby("ext")["dur_us"].sum()
        device[: len(ops)] = ops["ext"].map(per_ext).fillna(0.0).to_numpy()
    starts, ends = spans["ts_us"].to_numpy(), spans["end_us"].to_numpy()
    durs = spans["dur_us"].to_numpy()
    tids = spans["tid"].to_numpy()
    order_all = np.lexsort((-durs, starts))
    child = np.zeros(len(spans))
    total_device = device
    if device.any():
        swept, carried = _nesting_sweep(order_all, tids, starts.tolist(), ends.tolist(),
                                        durs.tolist(), device.tolist())
        child, total_device = np.asarray(swept), np.asarray(carried)
    else:  # no device time to carry up: each span's parent is enough
        for tid in pd.unique(tids):
            rows = order_all[tids[order_all] == tid]
            parent = _last_reaching(ends[rows], np.arange(len(rows)), starts[rows], strict=True)
            inside = parent >= 0
            np.add.at(child, rows[parent[inside]], durs[rows[inside]])
    table = pd.DataFrame({"name": spans["name"], "count": 1,
                          "self_us": spans["dur_us"] - np.asarray(child),
                          "total_us": spans["dur_us"], "self_device_us": device,
                          "total_device_us": total_device})
    if table.empty:
        return pd.DataFrame(columns=list(OPERATOR_COLUMNS))
    table = table.groupby("name", as_index=False).sum()
    return table.sort_values("total_us", ascending=False)[list(OPERATOR_COLUMNS)]
