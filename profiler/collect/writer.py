"""The run-directory writer: run.json and the CSV tables of ``profiler.rundir``, all atomic."""

from __future__ import annotations

import io
import platform
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from profiler.rundir import (
    OPTIONAL_RUN_JSON_KEYS,
    RUN_JSON,
    RUN_JSON_KEYS,
    SCHEMA_VERSION,
    atomic_write_text,
    write_json,
)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_revision(root: Path) -> str | None:
    """``git rev-parse HEAD`` of the project (``-dirty`` when the tree has changes), else None."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def versions(nvml_driver: str | None = None, nvml_version: str | None = None) -> dict[str, Any]:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": cudnn, "driver": nvml_driver,
            "nvml": nvml_version}


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "index": device.index or 0, "name": props.name,
                "total_memory_bytes": props.total_memory}
    import psutil

    from profiler.collect.hostload import cpu_model

    return {"type": device.type, "name": cpu_model(),
            "total_memory_bytes": psutil.virtual_memory().total}


def host() -> str:
    return socket.gethostname()


def csv_text(rows: Iterable[Mapping[str, Any]] | pd.DataFrame, columns: Sequence[str]) -> str:
    """CSV with exactly ``columns`` first (missing ones empty), then any extra columns."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    extra = [c for c in df.columns if c not in columns]
    df = df.reindex(columns=[*columns, *extra])
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue()


class RunWriter:
    """Owns one run directory. ``create`` is the only call that touches the file system
    before the run starts; options are validated before it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.meta: dict[str, Any] = dict.fromkeys(RUN_JSON_KEYS)
        self.meta["schema_version"] = SCHEMA_VERSION

    def create(self, overwrite: bool) -> None:
        if self.run_dir.exists() and overwrite:
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=False)

    def update(self, **fields: Any) -> None:
        """Set run.json keys; a key the contract (``profiler.rundir``) does not define is
        refused with a ``KeyError`` naming it."""
        unknown = sorted(set(fields) - set(RUN_JSON_KEYS) - set(OPTIONAL_RUN_JSON_KEYS))
        if unknown:
            raise KeyError(f"run.json key(s) {', '.join(unknown)} are not in the run-directory "
                           f"contract (profiler.rundir.RUN_JSON_KEYS)")
        self.meta.update(fields)

    def write_run(self) -> None:
        write_json(self.run_dir / RUN_JSON, self.meta)

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
                  columns: Sequence[str]) -> None:
        atomic_write_text(self.run_dir / name, csv_text(rows, columns))

