"""The run directory: the contract between ``profile`` (writer) and ``report`` (reader).

``runs/<name>/`` is a TensorBoard run and a self-describing record. Every file
name and column is defined here once; both sides import these constants.

Units: times in milliseconds (``*_ms``) or microseconds (``*_us``), memory in
bytes (``*_bytes``), timestamps in seconds since the epoch (``ts``) unless a
column says otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

SCHEMA_VERSION = 1  # run.json: newer versions are refused by the reader, older ones noted

# The run's metadata, JSON. Named .jsonc (JSON is valid JSONC) so that trace tools that load
# every *.json / *.gz file of a directory as a trace (HolisticTraceAnalysis) skip it;
# run directories written before keep run.json, which readers still accept.
RUN_JSON = "run.jsonc"
LEGACY_RUN_JSON = "run.json"
STEPS_CSV = "steps.csv"
MEMORY_BY_CATEGORY_CSV = "memory_by_category.csv"
ALLOCATIONS_CSV = "allocations.csv"
NVML_CSV = "nvml.csv"
OPERATORS_CSV = "operators.csv"
CUDA_SNAPSHOT = "cuda_memory_snapshot.pickle"
TRACE_SUFFIXES = (".pt.trace.json.gz", ".pt.trace.json")
# A multi-rank run (torchrun): rank 0's files are the run directory's own (run.jsonc,
# steps.csv, ...); rank r > 0 writes the same files under ranks/rank<r>/ (its run.jsonc
# holds its own status). Every rank's trace lies in the run directory itself, named
# rank<r>.<ts>.pt.trace.json.gz (TensorBoard: one worker per rank). No two ranks write
# the same file.
RANKS_DIR = "ranks"

STATUSES = ("running", "complete", "interrupted", "failed", "oom")
PHASES = ("warmup", "measured")  # steps.csv "phase": warm-up rows stay out of statistics
VIEWS = ("region", "role", "pool")  # memory_by_category.csv "view"
STEP_PARTS = ("forward", "backward", "optimizer")  # phases with a steps.csv <phase>_ms column
# Read side only: a ``running`` record whose writer is gone (lock free, process dead, or
# heartbeat stale) is reported as ``killed``; no writer ever writes it.
KILLED = "killed"

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
    "samples",          # samples in the batch (energy_flow: embeddings)
    "allocated_bytes",  # tensor bytes live at the end of the step (CUDA: caching allocator;
                        # CPU: the counting tensor allocator, collect.tensor_counter, from the
                        # run's start: the workload's tensors, never the process heap)
    "reserved_bytes",   # CUDA caching allocator reserve; empty on CPU (no such thing)
    "peak_bytes",       # highest tensor bytes live during the step (peak reset each step)
    "rss_bytes",        # process resident set size at the end of the step; sampled on the
                        # first step and the heartbeat steps (every --monitor-interval
                        # steps and the last; empty in between)
)

# steps.csv columns written only when the workload reports them (energy_flow does);
# readers treat them as absent otherwise. Any other field a workload returns from a step
# (``prof.step(lr=...)``) becomes a column after these, in the order it first appears.
OPTIONAL_STEPS_COLUMNS = (
    "flows_created",    # initial + spawned flows
    "flows_live_peak",
    "flows_completed",
    "steps_taken",      # lattice steps of the forward pass
    "flow_steps",       # sum over lattice steps of live flows (GRU rows processed)
)

# steps.csv columns the collector adds after those (then a workload's own columns):
COLLECTOR_STEPS_COLUMNS = (
    "end_ts",           # step end, seconds since the epoch
    "cpu_ms",           # CPU time of the process (user + system, every thread) during the
                        # step; cpu_ms / wall_ms / usable CPUs is the CPU share the step got
    "traced",           # 1 when torch.profiler was warming up or recording during the step
                        # (slower: kept out of the step-time statistics, analyze.steps)
    "alloc_count",      # tensor allocations made during the step (deterministic for a seed)
    "alloc_bytes",      # their bytes
    "heap_bytes",       # glibc mallinfo2 bytes in use: every C allocation of the process,
                        # profiler buffers included (context only, not model memory);
                        # sampled with rss_bytes
    "instrumented",     # --measure-overhead only: 1 instrumented, 0 bare step
)

# steps.csv column every run writes (0 for a single-process run):
RANK_COLUMN = "rank"    # torch.distributed rank that ran the step
# steps.csv columns of a DistributedDataParallel workload (light and full mode), timed
# around DDP's gradient synchronization (a communication hook on each bucket):
COMM_STEPS_COLUMNS = (
    "comm_ms",          # union of the buckets' all-reduce spans (launch -> completion)
    "comm_exposed_ms",  # part of comm_ms after the last bucket was launched (backward
                        # compute done): time the step waited for communication
    "comm_calls",       # all-reduce calls (buckets) in the step
    "comm_bytes",       # bytes all-reduced in the step
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
# allocations.csv column after ALLOCATION_COLUMNS: owner_region = the region owning the
# block (a free is charged to its allocation's region; what the viewer stacks).
ALLOCATION_EXTRA_COLUMNS = ("owner_region",)

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

OTHER_REGION = "other"
# record_function scope names the collector writes into traces:
MODULE_SCOPE_PREFIX = "module::"        # module::<qualified name>: one nn.Module's forward
PHASE_SCOPE_PREFIX = "profiler.phase."  # profiler.phase.<phase>: a phase of profiler.profile
PHASE_MARK_PREFIX = "profiler.phase_end."  # profiler.phase_end.<phase>#<step>: a phase end
TENSOR_ROLES = ("parameter", "gradient", "optimizer_state", "activation", "temporary", "other")


def atomic_write_text(path: Path | str, text: str, sync: bool = True) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename (never half-written)."""
    atomic_write_bytes(path, text.encode("utf-8"), sync)


def atomic_write_bytes(path: Path | str, data: bytes, sync: bool = True) -> None:
    atomic_write(path, lambda handle: handle.write(data), sync)


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object],
                 sync: bool = True) -> None:
    """Create ``path`` through ``write(binary_file)`` on a temporary file in the same folder,
    fsync and rename: readers see the old file or the whole new one, never a part. (The
    model keeps its own copy for checkpoints: it never imports the profiler.)
    ``sync=False`` leaves the fsync to the caller (the rename is still atomic for readers
    and survives the process being killed; only a machine crash needs the fsync).

    The temporary file is created with mode 0666 minus the umask (as ``open`` would), not
    ``mkstemp``'s 0600: a run is readable by whoever the user's umask allows.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def run_json_bytes(payload: dict[str, Any], compact: bool = False) -> bytes:
    """run.json's bytes: indented, or ``compact`` (one line, same content): what a heartbeat
    writes, since only indentation makes json use its pure-Python encoder (about 10x slower)."""
    if compact:
        text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    else:
        text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    return (text + "\n").encode("utf-8")


def write_json(path: Path | str, payload: dict[str, Any], sync: bool = True) -> None:
    atomic_write_bytes(path, run_json_bytes(payload), sync)


def staging_dir(target: Path | str, tag: str = "new") -> Path:
    """A new empty directory beside ``target`` (same file system, so it can be renamed into
    place), named ``.<target>.<tag>-<pid>-<random>``, mode 0777 minus the umask."""
    target = Path(target)
    path = target.with_name(f".{target.name}.{tag}-{os.getpid()}-{secrets.token_hex(3)}")
    os.mkdir(path, 0o777)
    return path


def replace_directory(staged: Path | str, target: Path | str) -> None:
    """Put the directory ``staged`` at ``target`` as one unit, then delete the old ``target``.

    On Linux an existing target is swapped in one ``renameat2(RENAME_EXCHANGE)`` call, so a
    reader sees the old directory whole or the new one whole; elsewhere (or on a file system
    without it) the old one is renamed aside first, leaving a moment with no ``target``.
    """
    staged, target = Path(staged), Path(target)
    if not target.exists():
        os.rename(staged, target)
        return
    if _exchange(staged, target):
        shutil.rmtree(staged, ignore_errors=True)  # now the old directory
        return
    aside = target.with_name(f".{target.name}.old-{os.getpid()}-{secrets.token_hex(3)}")
    os.rename(target, aside)
    os.rename(staged, target)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the call is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def lock_path(run_dir: Path | str) -> Path:
    """``<out>/.<name>.lock``: held (flock) by the profile writing ``<out>/<name>``; beside the
    run directory so that it outlives a directory being replaced."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f".{run_dir.name}.lock")


def lock_held(run_dir: Path | str) -> bool | None:
    """True if a live process holds ``run_dir``'s lock, False if the lock file is there but
    free (its writer died: the kernel drops a dead process's flock), None without one."""
    try:
        fd = os.open(lock_path(run_dir), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)
    return False


def run_json_path(run_dir: Path | str) -> Path:
    """The metadata file of ``run_dir``: ``RUN_JSON``, else an older run's
    ``LEGACY_RUN_JSON``; ``RUN_JSON``'s path when neither exists."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    legacy = run_dir / LEGACY_RUN_JSON
    return legacy if not path.exists() and legacy.exists() else path


def rank_dir(run_dir: Path | str, rank: int) -> Path:
    """Where rank ``rank`` of a run writes its files (rank 0: the run directory itself)."""
    run_dir = Path(run_dir)
    return run_dir if rank == 0 else run_dir / RANKS_DIR / f"rank{rank}"


def rank_dirs(run_dir: Path | str) -> dict[int, Path]:
    """The rank directories present under ``run_dir`` (rank 0 included), by rank."""
    run_dir = Path(run_dir)
    found = {0: run_dir}
    ranks = run_dir / RANKS_DIR
    if ranks.is_dir():
        for p in ranks.iterdir():
            if p.is_dir() and p.name.startswith("rank") and p.name[4:].isdigit():
                found[int(p.name[4:])] = p
    return dict(sorted(found.items()))


def trace_files(run_dir: Path | str) -> list[Path]:
    run_dir = Path(run_dir)
    return sorted(p for p in run_dir.iterdir() if p.name.endswith(TRACE_SUFFIXES))


# run.json(c) top-level keys; the writer fills every one of RUN_JSON_KEYS (missing values
# are null) and refuses any key not listed here:
#   schema_version, name, status (STATUSES), error (null or {"type", "message"}),
#   command (argv list), config ({"preset", "overrides", "variant", "pool", "mode",
#   "workload", "model": EnergyConfig.to_dict() or the user's config}), seeds ({"model",
#   "data", "torch"}), versions ({"python", "torch", "cuda", "cudnn", "driver", "nvml"}),
#   device ({"type", "name", "total_memory_bytes", "allocator_stats", "autocast"; CPU:
#   "cpu_model", "allocator_stats_unavailable" when the tensor counter could not load}),
#   host, git_revision,
#   started_at, ended_at (ISO 8601 UTC), steps_requested (null for a user loop),
#   steps_completed, warmup_steps, nvml ({"available": bool, "reason": str|null,
#   "interval_s"}), trace ({"schedule": {"wait", "warmup", "active", "repeat"},
#   "files": [...], "heap_trimmed": malloc_trim gave heap back after the window}),
#   attribution (the region sum check: "device", "events",
#   "sum_categories_bytes", "allocator_total_bytes", "tolerance_bytes", "ok",
#   "by_category", "view", "scopes" {"region_prefix", "regions", "modules"},
#   "module_depth"), timings ({"setup_s", "total_s", "trace_postprocess_s",
#   "step_ms_median", "step_ms_mean", "traced_step_ms_median", "samples_per_s",
#   "measured_steps", "measured_rule" (analyze.steps: the one definition of measured steps
#   and throughput), "overhead"}), memory_growth (analyze.memory.memory_growth over the
#   measured steps), environment (ENVIRONMENT variables that change speed or memory),
#   distributed (null for one process; else {"rank", "local_rank", "world_size", "backend", "launcher",
#   "timeout_s", "host", "pid", "device"} and, in rank 0's run.jsonc once the run ended,
#   "ranks": [{"rank", "host", "device", "status", "error"}], "failed_ranks",
#   "missing_ranks"; the top-level status is then the whole run's: complete only when
#   every rank completed), host_load (collect.hostload.HostLoad.end: CPU model, threads, governor, load before /
#   during / after, other_busy_cores, under_load; null until the run ends), heartbeat
#   ({"at", "ts", "phase" ("steps", "post-processing", "finished"), "steps_completed",
#   "pid", "host", "interval_steps", "every_s"}: rewritten every --monitor-interval steps;
#   a running record whose writer is gone reads as KILLED).
# Only on some runs: record_error (the last run.json update that could not be written),
#   kept_previous_run (returned only: an --overwrite run that recorded no step),
#   memory_at_failure (failed / oom: allocator state),
#   finalize_errors (what could not be written while finishing), memory_history (CUDA:
#   the allocation-history recording, collect.stats.CudaSnapshot.to_json).
RUN_JSON_KEYS = (
    "schema_version", "name", "status", "error", "command", "config", "seeds", "versions",
    "device", "host", "git_revision", "started_at", "ended_at", "steps_requested",
    "steps_completed", "warmup_steps", "nvml", "trace", "attribution", "timings",
    "memory_growth", "environment", "distributed", "host_load", "heartbeat",
)
OPTIONAL_RUN_JSON_KEYS = ("memory_at_failure", "finalize_errors", "memory_history",
                          "record_error", "kept_previous_run")


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs on this host (a zombie counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
