"""The run directory: the contract between ``profile`` (writer) and ``report`` (reader).

``runs/<name>/`` is a TensorBoard run and a self-describing record. Every file
name and column is defined here once; both sides import these constants.

Units: times in milliseconds (``*_ms``) or microseconds (``*_us``), memory in
bytes (``*_bytes``), timestamps in seconds since the epoch (``ts``) unless a
column says otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from energy_flow.regions import REGIONS
from energy_flow.runtime import atomic_write

SCHEMA_VERSION = 1

RUN_JSON = "run.json"
STEPS_CSV = "steps.csv"
MEMORY_BY_CATEGORY_CSV = "memory_by_category.csv"
ALLOCATIONS_CSV = "allocations.csv"
NVML_CSV = "nvml.csv"
OPERATORS_CSV = "operators.csv"
CUDA_SNAPSHOT = "cuda_memory_snapshot.pickle"
TRACE_SUFFIXES = (".pt.trace.json.gz", ".pt.trace.json")

STATUSES = ("running", "complete", "interrupted", "failed", "oom")
PHASES = ("warmup", "measured")

# steps.csv: one row per training step.
STEPS_COLUMNS = (
    "step",             # 0-based step index
    "phase",            # warmup | measured (warm-up rows are excluded from statistics)
    "wall_ms",          # whole step, device-synchronized at both ends (bare mode: no sync)
    "forward_ms",       # mapper + flow simulation + loss
    "backward_ms",
    "optimizer_ms",     # clipping + optimizer.step + zero_grad
    "loss",
    "skipped",          # 1 when the step was skipped as non-finite
    "samples",          # embeddings in the batch
    "flows_created",    # initial + spawned flows
    "flows_live_peak",
    "flows_completed",
    "steps_taken",      # lattice steps of the forward pass
    "flow_steps",       # sum over lattice steps of live flows (GRU rows processed)
    "allocated_bytes",  # allocator: currently allocated at the end of the step
    "reserved_bytes",   # allocator: reserved (CUDA caching allocator; = allocated on CPU)
    "peak_bytes",       # allocator: peak allocated during the step
    "rss_bytes",        # process resident set size at the end of the step
)

# memory_by_category.csv: per step and category.
MEMORY_COLUMNS = (
    "step",
    "view",             # region (model record_function scope) | role (tensor role) | pool
    "category",
    "live_bytes",       # bytes allocated in this category and still live at step end
    "peak_bytes",       # peak of the category's live bytes within the step
    "alloc_count",
    "alloc_bytes",
    "free_count",
    "free_bytes",
    "pool_hits",        # pool view only (empty otherwise)
    "pool_misses",
)

# allocations.csv: the allocation trace of the profiled (active) window.
ALLOCATION_COLUMNS = (
    "ts_us",            # profiler timestamp, microseconds
    "step",
    "bytes",            # signed: > 0 allocation, < 0 free
    "total_allocated",  # allocator total after the event, as the profiler recorded it
    "device",           # cpu | cuda:N
    "op",               # innermost operator enclosing the event, if any
    "region",           # innermost energy_flow record_function scope, or "other"
    "role",             # tensor role where known, else empty
)

# nvml.csv: one row per sample and GPU. Unsupported metrics stay empty.
NVML_COLUMNS = (
    "ts",
    "gpu",
    "used_bytes",
    "total_bytes",
    "process_bytes",     # this process's memory on the GPU (sampled at a slower interval)
    "util_gpu_pct",
    "util_mem_pct",
    "power_w",
    "temperature_c",
    "torch_allocated_bytes",
    "torch_cache_bytes",  # reserved - allocated
    "non_torch_bytes",    # used - reserved (context, libraries, other processes)
    "lost",               # 1 when the GPU stopped answering for this sample
)

# operators.csv: top operators of the trace window (self and total time).
OPERATOR_COLUMNS = ("name", "count", "self_us", "total_us", "self_device_us", "total_device_us")

MODEL_REGIONS = REGIONS  # energy_flow.<region> record_function scopes of the model
OTHER_REGION = "other"
TENSOR_ROLES = ("parameter", "gradient", "optimizer_state", "activation", "temporary", "other")


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename (never half-written)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_json(path: Path | str, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def trace_files(run_dir: Path | str) -> list[Path]:
    run_dir = Path(run_dir)
    return sorted(p for p in run_dir.iterdir() if p.name.endswith(TRACE_SUFFIXES))


# run.json top-level keys (the writer fills every one; missing values are null):
#   schema_version, name, status (STATUSES), error (null or {"type", "message"}),
#   command (argv list), config ({"preset", "overrides", "variant", "pool", "mode",
#   "model": EnergyConfig.to_dict()}), seeds ({"model", "data"}),
#   versions ({"python", "torch", "cuda", "cudnn", "driver", "nvml"}),
#   device ({"type", "name", "total_memory_bytes"}), host, git_revision,
#   started_at, ended_at (ISO 8601 UTC), steps_requested, steps_completed,
#   warmup_steps, nvml ({"available": bool, "reason": str|null, "interval_s"}),
#   trace ({"schedule": {"wait", "warmup", "active", "repeat"}, "files": [...]}),
#   attribution ({"tolerance_bytes", "sum_categories_bytes", "allocator_total_bytes"}),
#   memory_at_failure (oom only: allocator stats at that moment)
RUN_JSON_KEYS = (
    "schema_version", "name", "status", "error", "command", "config", "seeds", "versions",
    "device", "host", "git_revision", "started_at", "ended_at", "steps_requested",
    "steps_completed", "warmup_steps", "nvml", "trace", "attribution",
)
