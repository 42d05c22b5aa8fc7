"""The run-directory writer: run.json and the CSV tables of ``profiler.rundir``.

Every table but steps.csv is written whole and atomically (temporary file + rename).
steps.csv grows by appended rows, written and fsynced in blocks at each heartbeat:
each row is complete or absent (a block cut by a full disk is truncated back). The
run directory has one owner at a time (``RunLock``); with ``--overwrite`` the new
run is written beside the old one and replaces it only once it has a record.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import math
import numbers
import os
import platform
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from profiler.errors import DiskFullError, RunDirError
from profiler.rundir import (
    OPTIONAL_RUN_JSON_KEYS,
    RUN_JSON,
    RUN_JSON_KEYS,
    SCHEMA_VERSION,
    atomic_write_bytes,
    atomic_write_text,
    lock_path,
    replace_directory,
    run_json_bytes,
    staging_dir,
    write_json,
)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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
    """CSV with exactly ``columns`` first (missing ones empty), then any extra columns.
    The text of ``DataFrame.to_csv(index=False)``; frames of integer, float and text
    columns (every table of a run directory) are formatted a column at a time by numpy,
    several times faster than pandas' row writer, others by pandas."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    extra = [c for c in df.columns if c not in columns]
    df = df.reindex(columns=[*columns, *extra])
    cells = [_csv_cells(df[c]) for c in df.columns] if len(df.columns) else None
    if cells is None or any(c is None for c in cells):
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        return buf.getvalue()
    header = ",".join(_csv_quote(str(c)) for c in df.columns) + "\n"
    if not len(df):
        return header
    return header + "\n".join(map(",".join, zip(*cells, strict=True))) + "\n"


_CSV_SPECIAL = re.compile(r'[,"\n]')  # what pandas' writer quotes (a lone CR it does not)


def _csv_quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if _CSV_SPECIAL.search(text) else text


def _csv_cells(col: pd.Series) -> list[str] | None:
    """The CSV cells of one column as ``to_csv`` writes them, or None for a kind of column
    this formatter leaves to pandas."""
    kind = col.dtype.kind
    if kind in "iu":
        return list(map(str, col.to_numpy().tolist()))
    if kind == "f":
        values = col.to_numpy()
        text = list(map(repr, values.tolist()))  # pandas writes the shortest repr too
        for k in np.flatnonzero(np.isnan(values)).tolist():
            text[k] = ""
        return text
    if kind == "O" or isinstance(col.dtype, pd.StringDtype):
        codes, uniques = pd.factorize(col, use_na_sentinel=True)  # missing values: -1
        if not all(isinstance(u, str) for u in uniques):
            return None  # numbers or objects in a text column: pandas' rules
        table = np.array([*map(_csv_quote, uniques), ""], dtype=object)
        return table[codes].tolist()
    return None


def no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


class RunLock:
    """Exclusive ``flock`` on ``lock_path(run_dir)`` while a profile owns the run name.

    The kernel drops the lock when its process dies (SIGKILL included), so a dead run never
    holds a name; the file names the holder (pid, host, start) for the refusal message.
    """

    def __init__(self, run_dir: Path, wait_s: float = 0.5) -> None:
        self.path = lock_path(run_dir)
        self.run_dir = run_dir
        self.wait_s = wait_s
        self._fd: int | None = None

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                if time.monotonic() < deadline:  # a reader's brief shared lock, or a race
                    time.sleep(0.05)
                    continue
                raise RunDirError(f"run directory {self.run_dir} is in use by another profile "
                                  f"({holder or 'unknown process'}); choose another --name"
                                  ) from None
            mine = os.fstat(fd)
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                os.close(fd)  # the previous holder removed the file as we opened it
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {host()} since {utc_now()}\n".encode())
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def csv_cell(value: Any) -> Any:
    """One steps.csv cell: None -> empty, bools as 0/1, floats in full precision with
    non-finite values spelled nan / inf / -inf (so a reader can tell them from 'not recorded')."""
    kind = type(value)  # the common exact types first: a heartbeat formats every cell
    if kind is float:
        return repr(value) if value - value == 0.0 else str(value)  # inf - inf, nan: nan
    if kind is int or kind is str:
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return repr(value) if math.isfinite(value) else str(value)
    return value


_PLAIN_CELLS = {float, int, str, type(None)}


class RowAppender:
    """A CSV file that grows by blocks of complete rows (``O_APPEND``, one write per block).

    A block that a full disk cuts short is truncated back to the last complete row and
    ``DiskFullError`` raised. The open descriptor follows the file if its directory is
    renamed (an ``--overwrite`` run moving into place)."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = tuple(columns)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        self._fd: int | None = fd
        self._size = os.fstat(fd).st_size
        self._pending: list[Sequence[Any]] = []
        if self._size == 0:
            self._write(self._encode([list(self.columns)]))

    def add_values(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows given as values in ``columns``' order. A row of plain floats, ints, strings
        and Nones goes to the csv writer as it is: it writes those as ``csv_cell`` would
        (repr of a float, nan / inf / -inf, empty for None); other rows are converted."""
        self._pending.extend(values if set(map(type, values)) <= _PLAIN_CELLS
                             else list(map(csv_cell, values)) for values in rows)

    @staticmethod
    def _encode(rows: Sequence[Sequence[Any]]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue().encode("utf-8")

    def flush(self, sync: bool = True) -> int:
        """Write the pending rows as one block (fsync when ``sync``); returns rows written."""
        if self._fd is None or not self._pending:
            return 0
        rows = self._pending
        self._write(self._encode(rows))  # on failure the rows stay pending for a retry
        self._pending = []
        if sync:
            os.fsync(self._fd)
        return len(rows)

    def _write(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None, "write after close"
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except BaseException as exc:  # a full disk, or a second Ctrl-C between two writes
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)  # no torn row left behind
            if no_space(exc):
                raise DiskFullError(str(self.path)) from None
            raise
        self._size += len(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class BackgroundRecord:
    """run.json heartbeats written (temporary file, fsync, rename) and steps.csv fsynced by a
    daemon thread, off the training thread: a heartbeat costs the training thread one
    ``json.dumps`` and a page-cache append. Only the newest pending run.json is written.
    A failure (a full disk) is raised in the training thread by the next ``submit`` or
    ``close``, so the run stops at the next step boundary."""

    def __init__(self, steps_path: Path) -> None:
        self.steps_path = steps_path
        self._lock = threading.Lock()
        self._pending: tuple[Path, bytes] | None = None
        self._error: BaseException | None = None
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="run-record", daemon=True)
        self._thread.start()

    def submit(self, path: Path, data: bytes) -> None:
        self.check()
        with self._lock:
            self._pending = (path, data)
        self._wake.set()

    def check(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                job, self._pending = self._pending, None
            if job is not None:
                try:
                    _fsync_path(self.steps_path)
                    atomic_write_bytes(job[0], job[1])
                except OSError as exc:
                    self._error = DiskFullError(str(exc.filename or job[0])) \
                        if no_space(exc) else exc
            if self._stop and self._pending is None:
                return

    def close(self) -> None:
        """Write what is pending, stop the thread, raise its last failure."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=120)
        self.check()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunWriter:
    """Owns one run directory: its lock, its run.json and its tables.

    ``create`` is the only call that touches the file system before the run starts.
    With ``overwrite`` and an existing run, the new run is written into a staging
    directory beside it; ``commit`` puts it in place (one rename) once it has a record,
    and ``discard`` drops it (the old run stays) if it never gets one.
    """

    def __init__(self, run_dir: Path) -> None:
        self.target = run_dir
        self.run_dir = run_dir
        self.staged = False
        self.lock = RunLock(run_dir)
        self.meta: dict[str, Any] = dict.fromkeys(RUN_JSON_KEYS)
        self.meta["schema_version"] = SCHEMA_VERSION

    def create(self, overwrite: bool) -> None:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except OSError as exc:
            if no_space(exc):
                raise DiskFullError(str(self.target.parent)) from None
            raise RunDirError(f"cannot create run directory {self.target}: "
                              f"{exc.strerror or exc}") from None
        try:
            for leftover in self.target.parent.glob(f".{self.target.name}.new-*"):
                shutil.rmtree(leftover, ignore_errors=True)  # a dead overwrite's staging
            if self.target.exists():
                if not overwrite:
                    raise RunDirError(f"run directory {self.target} already exists "
                                      f"(use --overwrite)")
                self.run_dir = staging_dir(self.target)
                self.staged = True
            else:
                os.mkdir(self.target, 0o777)
        except OSError as exc:
            self.lock.release()
            if no_space(exc):
                raise DiskFullError(str(self.target.parent)) from None
            raise RunDirError(f"cannot create run directory {self.target}: "
                              f"{exc.strerror or exc}") from None
        except BaseException:
            self.lock.release()
            raise

    def commit(self) -> bool:
        """Move a staged run into place (the old run is deleted); True if it moved now."""
        if not self.staged:
            return False
        replace_directory(self.run_dir, self.target)
        self.run_dir, self.staged = self.target, False
        return True

    def discard(self) -> None:
        """Drop a staged run that never got a record: the old run stays as it was."""
        if self.staged:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir, self.staged = self.target, False

    def close(self) -> None:
        self.lock.release()

    def update(self, **fields: Any) -> None:
        """Set run.json keys; a key the contract (``profiler.rundir``) does not define is
        refused with a ``KeyError`` naming it."""
        unknown = sorted(set(fields) - set(RUN_JSON_KEYS) - set(OPTIONAL_RUN_JSON_KEYS))
        if unknown:
            raise KeyError(f"run.json key(s) {', '.join(unknown)} are not in the run-directory "
                           f"contract (profiler.rundir.RUN_JSON_KEYS)")
        self.meta.update(fields)

    def write_run(self) -> None:
        self._atomic(RUN_JSON, lambda path: write_json(path, self.meta))

    def run_json(self) -> bytes:
        """run.json as it would be written now, on one line (for a heartbeat's background
        write; the final record is indented)."""
        return run_json_bytes(self.meta, compact=True)

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
                  columns: Sequence[str]) -> None:
        text = csv_text(rows, columns)
        self._atomic(name, lambda path: atomic_write_text(path, text))

    def appender(self, name: str, columns: Sequence[str]) -> RowAppender:
        try:
            return RowAppender(self.run_dir / name, columns)
        except OSError as exc:
            if no_space(exc):
                raise DiskFullError(str(self.run_dir / name)) from None
            raise

    def _atomic(self, name: str, write) -> None:
        path = self.run_dir / name
        try:
            write(path)
        except OSError as exc:
            if no_space(exc):
                raise DiskFullError(str(path)) from None
            raise
