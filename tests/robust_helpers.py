"""Shared pieces of the fault tests: the tiny model, real CLI subprocesses, a tiny tmpfs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["lattice_width=4", "lattice_height=4", "batch_size=2", "carrier_hidden=16",
        "mapper_hidden=32", "embedding_dim=32", "lattice_depth=4", "carrier_layers=1",
        "max_flows=1000"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def profile_cmd(out: Path, name: str, *extra: str) -> list[str]:
    sets = [arg for field in TINY for arg in ("--set", field)]
    return [sys.executable, "-m", "profiler", "profile", "--out", str(out), "--name", name,
            "--device", "cpu", *sets, *extra]


def report_cmd(base: Path, new: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "profiler", "report", str(base), str(new), "--out", str(out),
            "--resamples", "200", *extra]


def run(cmd: list[str], timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, **kw)


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (root only; the test is skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, leave_bytes: int) -> None:
    """Fill the file system of ``path`` until about ``leave_bytes`` are free."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(path / "filler", "wb") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(0, free - leave_bytes))
