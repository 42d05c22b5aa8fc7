"""TensorBoard scalars of a run, written into the run directory next to the traces.

Tags (units in the name): ``time/{wall,forward,backward,optimizer}_ms``,
``throughput/samples_per_s``, ``train/loss``, ``flows/{created,live_peak,completed}``,
``memory/{allocated,reserved,peak,rss}_bytes``,
``summary/{step_ms_median,step_ms_mean,samples_per_s,measured_steps}`` (the run's figures
over its measured steps, as in run.json),
``memory_<view>/<category>/{live,peak}_bytes`` (view = region | role | pool, plus
``pool/<category>/{hits,misses}``), ``nvml/gpu<N>/<metric>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from profiler.analyze.steps import per_step_throughput

STEP_TAGS = {
    "wall_ms": "time/wall_ms", "forward_ms": "time/forward_ms",
    "backward_ms": "time/backward_ms", "optimizer_ms": "time/optimizer_ms",
    "loss": "train/loss", "flows_created": "flows/created",
    "flows_live_peak": "flows/live_peak", "flows_completed": "flows/completed",
    "allocated_bytes": "memory/allocated_bytes", "reserved_bytes": "memory/reserved_bytes",
    "peak_bytes": "memory/peak_bytes", "rss_bytes": "memory/rss_bytes",
    "heap_bytes": "memory/process_heap_bytes", "alloc_count": "memory/allocations",
}
NVML_METRICS = ("used_bytes", "process_bytes", "util_gpu_pct", "util_mem_pct", "power_w",
                "temperature_c", "torch_allocated_bytes", "torch_cache_bytes", "non_torch_bytes")


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    value = float(value)
    return None if math.isnan(value) else value


class ScalarWriter:
    """Thin wrapper over ``torch.utils.tensorboard.SummaryWriter`` (created lazily)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._writer = None

    def _w(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir), flush_secs=10)
        return self._writer

    def add(self, tag: str, value: Any, step: int, walltime: float | None = None) -> None:
        number = _number(value)
        if number is not None:
            self._w().add_scalar(tag, number, step, walltime=walltime)

    def steps(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """One point per steps.csv row and tag; throughput = samples / wall time."""
        for row in rows:
            step, wt = int(row["step"]), row.get("end_ts")
            for column, tag in STEP_TAGS.items():
                self.add(tag, row.get(column), step, wt)
            wall, samples = _number(row.get("wall_ms")), _number(row.get("samples"))
            if wall and samples:
                self.add("throughput/samples_per_s", per_step_throughput(samples, wall),
                         step, wt)

    def summary(self, timings: Mapping[str, Any], step: int) -> None:
        """The run's figures over its measured steps (``profiler.analyze.steps.summary``,
        the same numbers as run.json timings): ``summary/<key>`` at the last step."""
        for key in ("step_ms_median", "step_ms_mean", "samples_per_s", "measured_steps",
                    "traced_step_ms_median"):
            self.add(f"summary/{key}", timings.get(key), step)

    def categories(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """memory_by_category.csv rows: live / peak bytes per view and category (pool hits too)."""
        for row in rows:
            step, prefix = int(row["step"]), f"memory_{row['view']}/{row['category']}"
            self.add(f"{prefix}/live_bytes", row.get("live_bytes"), step)
            self.add(f"{prefix}/peak_bytes", row.get("peak_bytes"), step)
            if row["view"] == "pool":
                self.add(f"pool/{row['category']}/hits", row.get("pool_hits"), step)
                self.add(f"pool/{row['category']}/misses", row.get("pool_misses"), step)

    def nvml(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """nvml.csv rows: one point per sample (step = sample index per GPU, walltime = ts)."""
        counters: dict[int, int] = {}
        for row in rows:
            gpu = int(row["gpu"])
            i = counters.get(gpu, 0)
            counters[gpu] = i + 1
            for metric in NVML_METRICS:
                self.add(f"nvml/gpu{gpu}/{metric}", row.get(metric), i, row.get("ts"))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
