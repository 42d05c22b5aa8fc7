"""The torch.profiler session of a ``full`` run (collection only: the trace window is
post-processed by ``profiler.analyze.window`` through the profile facade).

The session writes gzip-compressed traces with ``tensorboard_trace_handler`` on
a ``torch.profiler.schedule(wait, warmup, active, repeat)`` policy, with memory
profiling and shapes, ProfilerStep spans from ``prof.step()`` and the rank in
``distributedInfo``; post-processing rewrites CUDA runtime events' category for the
TensorBoard plugin (``patch_for_tensorboard``). It also drops phase-end markers (``profiler.phase_end.<phase>#<step>``)
and snapshots the addresses of parameters, gradients and optimizer state at
each phase end of a recorded step, for the tensor-role view.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerAction, ProfilerActivity

from profiler.rundir import PHASE_MARK_PREFIX, atomic_write_bytes

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
    worker_name: str = WORKER_NAME
    # None: traces named <worker>.<time ns> (torch's handler); else <worker>.<span_base +
    # window> so that every rank of a run names a window alike (one TensorBoard span)
    span_base: int | None = None
    files: list[str] = field(default_factory=list)
    probes: dict[str, dict[int, str]] = field(default_factory=dict)
    say: Callable[[str], None] = lambda message: None  # the lines around each trace export
    _prof: Any = None

    def __enter__(self) -> TraceSession:
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        s = self.schedule
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
        # The handler is made for the run directory of the moment (a staged --overwrite run
        # moves into place during the run). A failed export leaves no partial trace behind.
        run_dir = self.run_dir
        before = set(p.name for p in run_dir.iterdir())
        self.say("exporting the torch.profiler trace ...")
        t0 = time.perf_counter()
        try:
            if self.span_base is not None:
                name = f"{self.worker_name}.{self.span_base + len(self.files)}.pt.trace.json.gz"
                prof.export_chrome_trace(str(run_dir / name))
            else:
                torch.profiler.tensorboard_trace_handler(
                    str(run_dir), worker_name=self.worker_name, use_gzip=True)(prof)
        except BaseException:
            for p in run_dir.iterdir():
                if p.name not in before and ".pt.trace.json" in p.name:
                    with contextlib.suppress(OSError):
                        p.unlink()
            raise
        new = sorted(p.name for p in run_dir.iterdir()
                     if p.name not in before and ".pt.trace.json" in p.name
                     and p.name.startswith(self.worker_name + "."))
        self.files.extend(new)
        size = sum((run_dir / n).stat().st_size for n in new)
        self.say(f"trace exported in {time.perf_counter() - t0:.1f} s "
                 f"({', '.join(new)}, {size / 2**20:.1f} MiB)")


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
