"""Multi-rank figures of one run: per-rank table, straggler verdict, communication.

Inputs: each rank's steps.csv rows (``rundir.STEPS_COLUMNS`` plus ``rank`` and, for a
DistributedDataParallel workload, ``rundir.COMM_STEPS_COLUMNS``), each rank's
operators.csv, and rank 0's ``distributed`` metadata. Pure functions, no I/O.

``compute_ms`` = ``wall_ms - comm_exposed_ms``: the part of a step a rank was not
waiting for communication. Under DDP every rank's step ends with the same gradient
all-reduce, so wall times are alike and a straggler shows in compute time (its peers
wait for it in the all-reduce: their ``comm_exposed_ms`` grows).

``rank_table`` columns (one row per rank):

================== ==============================================================
rank               torch.distributed rank
host, status       from the rank's record (run.jsonc)
steps              measured steps (warm-up and traced steps excluded)
step_ms            median wall time per step (ms)
compute_ms         median compute time (ms), as defined above
comm_ms            median time in DDP's gradient all-reduce per step (ms)
comm_share_pct     sum of comm_ms / sum of wall_ms over the steps (%)
overlap_pct        part of comm_ms that overlapped backward compute (%):
                   1 - comm_exposed_ms / comm_ms over the steps
trace_comm_ms      time in collective operators (gloo:* / nccl:*) per traced step,
                   from the trace window (operators.csv; ms)
trace_overlap_pct  part of the collectives' time in the trace window during which
                   the rank was computing backward (its autograd nodes ran): the
                   trace's own measure of overlap (``collective_overlap``; %)
flow_steps         mean flow-steps per step (energy_flow's work per rank; empty
                   for workloads that do not report flows)
samples            mean samples per step
peak_bytes         largest allocator peak of any step (bytes)
rss_bytes          largest process RSS at a step end (bytes)
================== ==============================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from profiler.analyze.metrics import step_samples
from profiler.parse.trace import BACKWARD_NODE_PREFIX, STEP_PREFIX

# The slowest rank's median compute time against the median rank's: above this, the
# run has a straggler.
STRAGGLER_THRESHOLD = 1.10
RANK_COLUMNS = ("rank", "host", "status", "steps", "step_ms", "compute_ms", "comm_ms",
                "comm_share_pct", "overlap_pct", "trace_comm_ms", "trace_overlap_pct", "flow_steps", "samples", "peak_bytes",
                "rss_bytes")
COLLECTIVE_PREFIXES = ("gloo:", "nccl:")
COLLECTIVE_COLUMNS = ("name", "ranks", "calls", "total_ms", "ms_per_call")


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce")


def with_compute(samples: pd.DataFrame) -> pd.DataFrame:
    """``samples`` with ``compute_ms`` (wall minus exposed communication; wall when the
    rank has no communication columns)."""
    out = samples.copy()
    out["compute_ms"] = _col(out, "wall_ms") - _col(out, "comm_exposed_ms").fillna(0.0)
    return out


def rank_table(rank_steps: dict[int, pd.DataFrame],
               records: dict[int, dict[str, Any]] | None = None,
               rank_operators: dict[int, pd.DataFrame | None] | None = None,
               traced_steps: int | None = None) -> pd.DataFrame:
    """One row per rank (columns: module docstring)."""
    rows = []
    operators = rank_operators or {}
    for rank, steps in sorted(rank_steps.items()):
        s = with_compute(step_samples(steps))
        rec = (records or {}).get(rank) or {}
        wall, comm, exposed = _col(s, "wall_ms"), _col(s, "comm_ms"), _col(s, "comm_exposed_ms")
        has_comm = comm.notna().any()
        rows.append({
            "rank": rank, "host": rec.get("host"), "status": rec.get("status"),
            "steps": len(s), "step_ms": wall.median(), "compute_ms": _col(s, "compute_ms").median(),
            "comm_ms": comm.median() if has_comm else np.nan,
            "comm_share_pct": 100.0 * comm.sum() / wall.sum() if has_comm and wall.sum() > 0
            else np.nan,
            "overlap_pct": 100.0 * (1.0 - exposed.sum() / comm.sum())
            if has_comm and comm.sum() > 0 else np.nan,
            "trace_comm_ms": _trace_comm(operators.get(rank), traced_steps),
            "trace_overlap_pct": _number((rec.get("trace_comm") or {}).get("overlap_pct")),
            "flow_steps": _col(s, "flow_steps").mean(), "samples": _col(s, "samples").mean(),
            "peak_bytes": _col(steps, "peak_bytes").max(), "rss_bytes": _col(steps, "rss_bytes").max(),
        })
    return pd.DataFrame(rows, columns=list(RANK_COLUMNS))


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _covered(starts: np.ndarray, ends: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per query interval [a, b]: its length covered by the union of [starts, ends]."""
    if not len(starts):
        return np.zeros(len(a))
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], np.maximum.accumulate(ends[order])
    # the union as disjoint intervals: a new one starts where a span begins after every
    # earlier span ended
    new = np.r_[True, s[1:] > e[:-1]]
    u_start = s[new]
    u_end = np.r_[e[np.flatnonzero(new)[1:] - 1], e[-1]]
    length = np.r_[0.0, np.cumsum(u_end - u_start)]

    def upto(x: np.ndarray) -> np.ndarray:  # covered length of (-inf, x]
        i = np.searchsorted(u_start, x, side="right")  # unions starting at or before x
        before = length[np.maximum(i - 1, 0)]
        partial = np.clip(x - u_start[np.maximum(i - 1, 0)], 0.0,
                          (u_end - u_start)[np.maximum(i - 1, 0)])
        return np.where(i > 0, before + partial, 0.0)

    return upto(b) - upto(a)


def collective_overlap(traces: list[Any]) -> dict[str, Any] | None:
    """Communication in one rank's trace window (``parse.trace.TraceFrames`` of its trace
    files): the collective spans (operators and scopes named ``gloo:*`` / ``nccl:*``, on
    whatever thread ran them) and how much of their time the rank's autograd engine was
    running backward nodes (``autograd::engine::evaluate_function:`` operators) at the same
    moment. {"steps" (ProfilerStep spans), "calls", "comm_ms_per_step", "overlap_pct"};
    None without collectives. On CUDA the spans are the host side of NCCL's work."""
    comm_s, comm_e, back_s, back_e, steps = [], [], [], [], 0
    for f in traces:
        spans = pd.concat([f.ops[["name", "ts_us", "end_us"]],
                           f.annotations[["name", "ts_us", "end_us"]]], ignore_index=True)
        names = spans["name"].astype(str)
        comm = spans[names.str.startswith(COLLECTIVE_PREFIXES)]
        back = f.ops[f.ops["name"].astype(str).str.startswith(BACKWARD_NODE_PREFIX)]
        comm_s.append(comm["ts_us"].to_numpy(float))
        comm_e.append(comm["end_us"].to_numpy(float))
        back_s.append(back["ts_us"].to_numpy(float))
        back_e.append(back["end_us"].to_numpy(float))
        steps += int(f.annotations["name"].astype(str).str.startswith(STEP_PREFIX).sum())
    a, b = np.concatenate(comm_s), np.concatenate(comm_e)
    if not len(a):
        return None
    total = float((b - a).sum())
    overlapped = float(_covered(np.concatenate(back_s), np.concatenate(back_e), a, b).sum())
    return {"steps": steps, "calls": int(len(a)),
            "comm_ms_per_step": total / 1e3 / steps if steps else None,
            "overlap_pct": 100.0 * overlapped / total if total > 0 else None}


def _trace_comm(ops: pd.DataFrame | None, traced_steps: int | None) -> float:
    if ops is None or ops.empty or not traced_steps:
        return np.nan
    mine = ops[ops["name"].astype(str).str.startswith(COLLECTIVE_PREFIXES)]
    device = pd.to_numeric(mine["total_device_us"], errors="coerce").fillna(0.0)
    host = pd.to_numeric(mine["total_us"], errors="coerce").fillna(0.0)
    return float(device.where(device > 0, host).sum()) / 1e3 / traced_steps


def straggler(table: pd.DataFrame, threshold: float = STRAGGLER_THRESHOLD) -> dict[str, Any]:
    """Slowest rank against the median rank by median compute time: {"ratio",
    "slowest_rank", "slowest_ms", "median_ms", "threshold", "verdict"} (verdict
    "straggler" above ``threshold``, "balanced" otherwise, "n/a" under two ranks)."""
    t = table.dropna(subset=["compute_ms"])
    if len(t) < 2:
        return {"ratio": np.nan, "slowest_rank": None, "slowest_ms": np.nan,
                "median_ms": np.nan, "threshold": threshold, "verdict": "n/a"}
    slow = t.loc[t["compute_ms"].idxmax()]
    median = float(t["compute_ms"].median())
    ratio = float(slow["compute_ms"]) / median if median > 0 else np.nan
    verdict = "straggler" if ratio > threshold else "balanced"
    return {"ratio": ratio, "slowest_rank": int(slow["rank"]),
            "slowest_ms": float(slow["compute_ms"]), "median_ms": median,
            "threshold": threshold, "verdict": verdict}


def per_step(rank_steps: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per measured step, across ranks: ``comm_share`` (sum of comm_ms / sum of wall_ms,
    a fraction; NaN without communication columns) and ``straggler_ratio`` (slowest
    compute_ms / median compute_ms; 1.0 for one rank). Steps every rank measured."""
    frames = []
    for rank, steps in rank_steps.items():
        s = with_compute(step_samples(steps))
        frames.append(pd.DataFrame({"step": _col(s, "step"), "rank": rank,
                                    "wall_ms": _col(s, "wall_ms"),
                                    "comm_ms": _col(s, "comm_ms"),
                                    "compute_ms": _col(s, "compute_ms")}))
    if not frames:
        return pd.DataFrame(columns=["step", "comm_share", "straggler_ratio"])
    all_ = pd.concat(frames, ignore_index=True)
    counts = all_.groupby("step")["rank"].nunique()
    full = counts[counts == len(rank_steps)].index
    all_ = all_[all_["step"].isin(full)]
    g = all_.groupby("step")
    wall = g["wall_ms"].sum()
    comm = g["comm_ms"].sum(min_count=1)
    share = (comm / wall).where(wall > 0)
    ratio = g["compute_ms"].max() / g["compute_ms"].median()
    return pd.DataFrame({"step": wall.index, "comm_share": share.to_numpy(),
                         "straggler_ratio": ratio.to_numpy()}).reset_index(drop=True)


def top_collectives(rank_operators: dict[int, pd.DataFrame | None], top: int = 10
                    ) -> pd.DataFrame:
    """Collective operators of the trace windows (``gloo:*`` / ``nccl:*``) summed over
    ranks (columns ``COLLECTIVE_COLUMNS``; total_ms and ms_per_call in ms, the time the
    collective ran on the backend's thread or stream), largest total first."""
    rows = []
    for rank, ops in rank_operators.items():
        if ops is None or ops.empty:
            continue
        mine = ops[ops["name"].astype(str).str.startswith(COLLECTIVE_PREFIXES)]
        for r in mine.itertuples():
            device = float(r.total_device_us) if pd.notna(r.total_device_us) else 0.0
            rows.append({"name": r.name, "rank": rank, "calls": int(r.count),
                         "us": device if device > 0 else float(r.total_us)})
    if not rows:
        return pd.DataFrame(columns=list(COLLECTIVE_COLUMNS))
    f = pd.DataFrame(rows).groupby("name").agg(ranks=("rank", "nunique"), calls=("calls", "sum"),
                                               us=("us", "sum")).reset_index()
    f["total_ms"] = f["us"] / 1e3
    f["ms_per_call"] = f["total_ms"] / f["calls"]
    f = f.sort_values("total_ms", ascending=False).head(top)
    return f[list(COLLECTIVE_COLUMNS)].reset_index(drop=True)


def scaling(base_table: pd.DataFrame, new_table: pd.DataFrame) -> dict[str, Any] | None:
    """Two runs with different rank counts and the same per-rank batch (weak scaling):
    {"ranks_base", "ranks_new", "step_ms_base", "step_ms_new", "samples_per_s_base",
    "samples_per_s_new", "speedup", "efficiency"}; efficiency = (throughput_new /
    throughput_base) / (ranks_new / ranks_base). None when the rank counts are equal."""
    nb, nn = len(base_table), len(new_table)
    if nb == 0 or nn == 0 or nb == nn:
        return None

    def rate(t: pd.DataFrame) -> float:
        return float((t["samples"] / (t["step_ms"] / 1e3)).sum())

    rb, rn = rate(base_table), rate(new_table)
    speedup = rn / rb if rb > 0 else np.nan
    return {"ranks_base": nb, "ranks_new": nn,
            "step_ms_base": float(base_table["step_ms"].median()),
            "step_ms_new": float(new_table["step_ms"].median()),
            "samples_per_s_base": rb, "samples_per_s_new": rn, "speedup": speedup,
            "efficiency": speedup / (nn / nb)}
