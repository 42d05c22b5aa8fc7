"""NVML peaks and device-memory reconciliation (pure; input nvml.csv)."""

from __future__ import annotations

import numpy as np
import pandas as pd

NVML_PEAK_COLUMNS = (
    "gpu",
    "samples",               # rows of nvml.csv for this GPU (lost samples excluded)
    "peak_used_bytes",       # max device memory used (all processes)
    "peak_process_bytes",    # max memory of the profiled process
    "peak_power_w",
    "max_temperature_c",
    "median_util_gpu_pct",
)
RECONCILE_COLUMNS = (
    "gpu",
    "ts",                     # sample at the peak of used memory (s since the epoch)
    "used_bytes",             # NVML used
    "torch_allocated_bytes",  # allocator: allocated
    "torch_cache_bytes",      # allocator: reserved - allocated
    "non_torch_bytes",        # context, libraries, other processes
    "explained_bytes",        # allocated + cache + non-torch
    "residual_bytes",         # used - explained
)


def usable_samples(nvml: pd.DataFrame | None) -> pd.DataFrame:
    """nvml.csv rows without the samples marked lost (empty without data)."""
    if nvml is None or nvml.empty:
        return pd.DataFrame()
    lost = pd.to_numeric(nvml["lost"], errors="coerce").fillna(0) > 0
    return nvml[~lost]


def nvml_peaks(nvml: pd.DataFrame | None) -> pd.DataFrame:
    """One row per GPU (``NVML_PEAK_COLUMNS``); empty metrics stay nan, never invented."""
    rows = usable_samples(nvml)
    if rows.empty:
        return pd.DataFrame(columns=list(NVML_PEAK_COLUMNS))
    out = rows.groupby(rows["gpu"].astype(str)).agg(
        samples=("ts", "size"), peak_used_bytes=("used_bytes", "max"),
        peak_process_bytes=("process_bytes", "max"), peak_power_w=("power_w", "max"),
        max_temperature_c=("temperature_c", "max"), median_util_gpu_pct=("util_gpu_pct", "median"),
    )
    return out.reset_index()[list(NVML_PEAK_COLUMNS)]


def reconcile(nvml: pd.DataFrame | None) -> pd.DataFrame:
    """Per GPU, at the sample of peak used memory: NVML used against allocated + allocator
    cache + non-PyTorch memory (``RECONCILE_COLUMNS``, bytes)."""
    rows = usable_samples(nvml)
    if rows.empty or rows["used_bytes"].isna().all():
        return pd.DataFrame(columns=list(RECONCILE_COLUMNS))
    out = []
    for gpu, group in rows.groupby(rows["gpu"].astype(str)):
        if group["used_bytes"].isna().all():
            continue
        peak = group.loc[group["used_bytes"].idxmax()]
        parts = [peak["torch_allocated_bytes"], peak["torch_cache_bytes"], peak["non_torch_bytes"]]
        explained = float(np.sum(parts)) if all(pd.notna(parts)) else float("nan")
        out.append({
            "gpu": gpu, "ts": peak["ts"], "used_bytes": peak["used_bytes"],
            "torch_allocated_bytes": parts[0], "torch_cache_bytes": parts[1],
            "non_torch_bytes": parts[2], "explained_bytes": explained,
            "residual_bytes": peak["used_bytes"] - explained,
        })
    return pd.DataFrame(out, columns=list(RECONCILE_COLUMNS))
