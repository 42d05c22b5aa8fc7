"""The torch.profiler session of a ``full`` run and the post-processing of its trace window.

The session writes gzip-compressed traces with ``tensorboard_trace_handler`` on
a ``torch.profiler.schedule(wait, warmup, active, repeat)`` policy, with memory
profiling and shapes, ProfilerStep spans from ``prof.step()`` and the rank in
``distributedInfo``; post-processing rewrites CUDA runtime events' category for the
TensorBoard plugin (``patch_for_tensorboard``). It also drops phase-end markers (``profiler.phase_end.<phase>#<step>``)
and snapshots the addresses of parameters, gradients and optimizer state at
each phase end of a recorded step, for the tensor-role view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.profiler import ProfilerAction, ProfilerActivity

from profiler.analyze.memory import assign_roles, attribution_check, category_stats, owners
from profiler.parse.trace import (
    PHASE_MARK_PREFIX,
    attribute_memory,
    parse_trace,
    phase_marks,
    read_trace,
)
from profiler.rundir import (
    ALLOCATION_COLUMNS,
    MODEL_REGIONS,
    OPERATOR_COLUMNS,
    OTHER_REGION,
    TENSOR_ROLES,
    atomic_write_bytes,
)

WORKER_NAME = "rank0"
_RECORDING = (ProfilerAction.WARMUP, ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)


@dataclass(frozen=True)
class TraceSchedule:
    wait: int = 1
    warmup: int = 1
    active: int = 3
    repeat: int = 1

    def __post_init__(self) -> None:
        for name in ("wait", "warmup", "repeat"):
            if getattr(self, name) < 0:
                raise ValueError(f"trace {name} must be >= 0, got {getattr(self, name)}")
        if self.active <= 0:
            raise ValueError(f"trace active must be > 0, got {self.active}")

    @property
    def steps_needed(self) -> int:
        return (self.wait + self.warmup + self.active) * max(self.repeat, 1)

    def to_json(self) -> dict[str, int]:
        return {"wait": self.wait, "warmup": self.warmup, "active": self.active,
                "repeat": self.repeat}


def _distributed_info() -> dict[str, Any]:
    return {"backend": "none", "rank": 0, "world_size": 1}


@dataclass
class TraceSession:
    """Context manager around ``torch.profiler.profile``; call ``step()`` after every step."""

    run_dir: Path
    schedule: TraceSchedule
    device: torch.device
    files: list[str] = field(default_factory=list)
    operators: list[pd.DataFrame] = field(default_factory=list)
    probes: dict[str, dict[int, str]] = field(default_factory=dict)
    _prof: Any = None

    def __enter__(self) -> TraceSession:
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        s = self.schedule
        self._handler = torch.profiler.tensorboard_trace_handler(
            str(self.run_dir), worker_name=WORKER_NAME, use_gzip=True)
        self._prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=s.wait, warmup=s.warmup, active=s.active,
                                             repeat=s.repeat),
            on_trace_ready=self._on_trace_ready, profile_memory=True, record_shapes=True,
            with_stack=False)
        self._prof.__enter__()
        self._tag()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._prof.__exit__(*exc)

    @property
    def recording(self) -> bool:
        return self._prof is not None and self._prof.current_action in _RECORDING

    def _tag(self) -> None:
        if self.recording and not torch.distributed.is_initialized():
            self._prof.add_metadata_json("distributedInfo", json.dumps(_distributed_info()))

    def step(self) -> None:
        self._prof.step()
        self._tag()

    def mark_phase(self, phase: str, step: int, role_tensors: dict[str, list[torch.Tensor]]) -> None:
        """Phase-end marker in the trace plus an address snapshot for the role view."""
        if not self.recording:
            return
        name = f"{PHASE_MARK_PREFIX}{phase}#{step}"
        with torch.profiler.record_function(name):
            pass
        snap: dict[int, str] = {}
        for role, tensors in role_tensors.items():
            for t in tensors:
                if t is not None and t.numel() > 0:
                    snap[t.untyped_storage().data_ptr()] = role
        self.probes[name] = snap

    def _on_trace_ready(self, prof: Any) -> None:
        before = set(p.name for p in self.run_dir.iterdir())
        self._handler(prof)
        new = sorted(p.name for p in self.run_dir.iterdir()
                     if p.name not in before and ".pt.trace.json" in p.name)
        self.files.extend(new)
        self.operators.append(operator_table(prof.key_averages()))


def operator_table(averages: Any) -> pd.DataFrame:
    """operators.csv rows from ``prof.key_averages()`` (times in microseconds)."""
    rows = []
    for a in averages:
        if a.key.startswith("ProfilerStep") or a.key.startswith(PHASE_MARK_PREFIX):
            continue
        rows.append({
            "name": a.key, "count": int(a.count),
            "self_us": float(a.self_cpu_time_total), "total_us": float(a.cpu_time_total),
            "self_device_us": float(getattr(a, "self_device_time_total", 0.0)),
            "total_device_us": float(getattr(a, "device_time_total", 0.0)),
        })
    return pd.DataFrame(rows, columns=list(OPERATOR_COLUMNS))


def merge_operators(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Sum over trace cycles, sorted by total CPU time, largest first."""
    if not tables:
        return pd.DataFrame(columns=list(OPERATOR_COLUMNS))
    df = pd.concat(tables).groupby("name", as_index=False).sum()
    return df.sort_values("total_us", ascending=False)[list(OPERATOR_COLUMNS)]


# Kineto (torch >= 2.0) writes CUDA runtime / driver API calls with these categories;
# torch-tb-profiler 0.4.3 knows only "Runtime" (its EventTypeMap), drops them, and then
# attributes every kernel to CallTreeRoot in its Operator and Kernel views.
KINETO_RUNTIME_CATEGORIES = ("cuda_runtime", "cuda_driver")
TB_RUNTIME_CATEGORY = "Runtime"
ORIGINAL_CATEGORY_ARG = "kineto category"


def patch_for_tensorboard(trace: dict[str, Any]) -> bool:
    """Make a trace readable by torch-tb-profiler 0.4.3, in place; True if it changed.

    - ``distributedInfo`` added when torch did not write it;
    - CUDA runtime / driver events get the category the plugin understands
      (``Runtime``; Kineto's original kept in ``args["kineto category"]``), so that the
      plugin links each kernel, through its runtime call's correlation and external id,
      to the operator that launched it.
    """
    changed = False
    if "distributedInfo" not in trace:
        trace["distributedInfo"] = _distributed_info()
        changed = True
    for e in trace.get("traceEvents", ()):
        cat = e.get("cat")
        if cat in KINETO_RUNTIME_CATEGORIES:
            e["cat"] = TB_RUNTIME_CATEGORY
            e.setdefault("args", {})[ORIGINAL_CATEGORY_ARG] = cat
            changed = True
    return changed


def ensure_distributed_info(path: Path, trace: dict[str, Any]) -> bool:
    """Apply ``patch_for_tensorboard`` to the trace file ``path`` (already read as
    ``trace``) with one atomic rewrite when anything changed. True if patched."""
    import gzip

    if not patch_for_tensorboard(trace):
        return False
    data = json.dumps(trace).encode("utf-8")
    atomic_write_bytes(path, gzip.compress(data, 6) if path.name.endswith(".gz") else data)
    return True


@dataclass
class WindowTables:
    allocations: pd.DataFrame        # ALLOCATION_COLUMNS
    memory_by_category: pd.DataFrame  # MEMORY_COLUMNS, views region and role
    attribution: dict[str, Any]


def window_tables(paths: list[Path], probes: dict[str, dict[int, str]], device: torch.device,
                  tolerance_bytes: int) -> WindowTables:
    """Allocations with region / role, per-step category stats and the sum check, from traces."""
    events = []
    for path in paths:
        trace = read_trace(path)
        ensure_distributed_info(path, trace)
        frames = parse_trace(trace)
        ev = attribute_memory(frames)
        marks = phase_marks(frames.annotations)
        probe_list = []
        for _, mark in marks.iterrows():
            name = f"{PHASE_MARK_PREFIX}{mark['phase']}#{mark['step']}"
            if name in probes:
                probe_list.append((float(mark["ts_us"]), probes[name]))
        ev["role"] = assign_roles(ev, marks, probe_list) if len(ev) else []
        events.append(ev)
    ev = pd.concat(events, ignore_index=True) if events else pd.DataFrame(
        columns=[*ALLOCATION_COLUMNS, "addr", "tid"])
    main = "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"
    if len(ev):
        ev["owner_region"] = owners(ev, "region")
        steps = sorted(ev["step"].unique())
        on_device = ev[ev["device"] == main]  # host events of a CUDA run stay in allocations.csv
        by_cat = pd.concat([
            category_stats(on_device, "owner_region", "region", steps,
                           [*MODEL_REGIONS, OTHER_REGION]),
            category_stats(on_device, "role", "role", steps, TENSOR_ROLES),
        ], ignore_index=True)
    else:
        by_cat = pd.DataFrame()
    check = attribution_check(ev, "region", main, tolerance_bytes) if len(ev) else {
        "device": main, "events": 0, "sum_categories_bytes": 0, "allocator_total_bytes": 0,
        "tolerance_bytes": tolerance_bytes, "ok": True, "by_category": {}}
    return WindowTables(ev[list(ALLOCATION_COLUMNS)] if len(ev) else pd.DataFrame(
        columns=list(ALLOCATION_COLUMNS)), by_cat, check)
