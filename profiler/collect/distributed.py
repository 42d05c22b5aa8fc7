"""torch.distributed at the collector's boundary: which rank this process is, the process
group of a ``torchrun`` launch, the timing of DistributedDataParallel's gradient
synchronization, and the end of a multi-rank run (rank 0 records every rank's status).

Ranks come from the environment torchrun (``torch.distributed.run``) sets: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (``GROUP_RANK`` / ``TORCHELASTIC_RUN_ID`` say which launcher).
Backends: gloo on CPU, NCCL on CUDA. Every collective has a timeout (``timeout_s``,
default ``DEFAULT_TIMEOUT_S``; ``--collective-timeout`` or ``PROFILER_COLLECTIVE_TIMEOUT``):
a rank whose peer died or hangs raises instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from profiler.collect.writer import RunLock
from profiler.errors import RunDirError
from profiler.rundir import RANKS_DIR, lock_held, pid_alive, run_json_path, write_json

DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "PROFILER_COLLECTIVE_TIMEOUT"
# How long rank 0 waits, at the end, for the other ranks' records to leave "running"
# (torchrun kills the workers 30 s after it asked them to stop).
FINISH_WAIT_S = 15.0
# Errors a rank sees because a peer went away: they do not make that rank the culprit.
_PEER_ERRORS = ("DistBackendError", "DistNetworkError", "DistStoreError")
_PEER_MESSAGES = ("closed by peer", "connection reset", "broken pipe", "timed out", "timeout",
                  "connection refused", "socket", "gloo", "nccl")


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a distributed launch."""

    rank: int
    local_rank: int
    world_size: int
    launcher: str  # torchrun | env (RANK / WORLD_SIZE set by something else)
    timeout_s: float = DEFAULT_TIMEOUT_S
    backend: str | None = None  # set once the process group exists

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def to_json(self, device: torch.device) -> dict[str, Any]:
        return {"rank": self.rank, "local_rank": self.local_rank,
                "world_size": self.world_size, "backend": self.backend,
                "launcher": self.launcher, "timeout_s": self.timeout_s,
                "host": socket.gethostname(), "pid": os.getpid(), "device": str(device)}


class DistributedError(RuntimeError):
    """The distributed environment is unusable (the message says what is wrong)."""


def timeout_from_env(default: float = DEFAULT_TIMEOUT_S) -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if value <= 0:
        raise DistributedError(f"{TIMEOUT_ENV} must be > 0 seconds, got {text!r}")
    return value


def rank_from_env(timeout_s: float | None = None) -> RankInfo | None:
    """This process's rank from torchrun's environment; None outside a launch."""
    env = os.environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return None
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DistributedError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers, got "
                               f"{env.get('RANK')!r} / {env.get('WORLD_SIZE')!r} / "
                               f"{env.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK {rank} is outside WORLD_SIZE {world}")
    launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "env"
    timeout = timeout_s if timeout_s is not None else timeout_from_env()
    return RankInfo(rank, local, world, launcher, timeout)


def rank_of_group(info: RankInfo | None) -> RankInfo | None:
    """``info`` completed from an already initialized process group (a user script that
    called ``init_process_group`` itself); None when there is no group and no launch."""
    if not (dist.is_available() and dist.is_initialized()):
        return info
    rank, world = dist.get_rank(), dist.get_world_size()
    local = info.local_rank if info is not None else int(os.environ.get("LOCAL_RANK", rank))
    launcher = info.launcher if info is not None else "user"
    timeout = info.timeout_s if info is not None else timeout_from_env()
    return RankInfo(rank, local, world, launcher, timeout, str(dist.get_backend()))


def init_process_group(info: RankInfo, device: torch.device) -> RankInfo:
    """Join the launch's process group (gloo on CPU, NCCL on CUDA) with the timeout."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=info.timeout_s)}
    if backend == "nccl":
        kwargs["device_id"] = device
    try:
        dist.init_process_group(**kwargs)
    except Exception as exc:
        raise DistributedError(f"cannot join the process group ({backend}): "
                               f"{type(exc).__name__}: {exc}") from exc
    return RankInfo(info.rank, info.local_rank, info.world_size, info.launcher,
                    info.timeout_s, backend)


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group (peers blocked on this rank then fail instead of waiting)."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# --- DDP gradient synchronization, timed in light and full mode ---------------------------
class CommTimer:
    """A DDP communication hook: the default all-reduce (average over ranks), with each
    bucket's launch and completion time recorded. ``take()`` gives one step's figures
    (``rundir.COMM_STEPS_COLUMNS``). On CUDA the completion is the host callback of the
    NCCL work (the trace has the device time)."""

    def __init__(self) -> None:
        self._spans: list[tuple[float, float, int]] = []
        self._lock = threading.Lock()

    def attach(self, ddp: torch.nn.parallel.DistributedDataParallel) -> None:
        # DDP checks the hook's annotations: none here (this module's are strings)
        def hook(state, bucket):  # type: ignore[no-untyped-def]
            return self._hook(state, bucket)

        ddp.register_comm_hook(None, hook)

    def _hook(self, state: Any, bucket: Any) -> torch.futures.Future:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        start = time.perf_counter()
        nbytes = bucket.buffer().numel() * bucket.buffer().element_size()
        fut = allreduce_hook(state, bucket)

        def done(f: torch.futures.Future) -> torch.Tensor:
            with self._lock:
                self._spans.append((start, time.perf_counter(), nbytes))
            return f.value()

        return fut.then(done)

    def take(self) -> dict[str, Any]:
        """The spans recorded since the last call, summarized (ms)."""
        with self._lock:
            spans, self._spans = self._spans, []
        if not spans:
            return {"comm_ms": 0.0, "comm_exposed_ms": 0.0, "comm_calls": 0, "comm_bytes": 0}
        spans.sort()
        total, cur_s, cur_e = 0.0, spans[0][0], spans[0][1]
        for s, e, _ in spans[1:]:
            if s > cur_e:
                total += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        total += cur_e - cur_s
        last_launch = max(s for s, _, _ in spans)
        last_done = max(e for _, e, _ in spans)
        return {"comm_ms": total * 1e3, "comm_exposed_ms": max(0.0, last_done - last_launch) * 1e3,
                "comm_calls": len(spans), "comm_bytes": sum(n for _, _, n in spans)}


# --- the end of a multi-rank run ----------------------------------------------------------
def rank_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """One rank's line of rank 0's ``distributed.ranks`` from its run.jsonc contents."""
    d = meta.get("distributed") or {}
    return {"rank": d.get("rank", 0), "host": d.get("host"), "pid": d.get("pid"),
            "device": d.get("device"), "status": meta.get("status"),
            "error": meta.get("error"), "steps_completed": meta.get("steps_completed"),
            "trace_comm": d.get("trace_comm")}


def gather_summaries(meta: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every rank's summary through the process group (nodes without a shared file
    system); None when a peer is gone."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    out: list[Any] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(out, rank_summary(meta))
    except Exception:
        return None
    return out


def read_rank_records(run_dir: Path, world_size: int) -> dict[int, dict[str, Any]]:
    """The summaries of ranks 1..world_size-1 readable under ``run_dir/ranks``."""
    found: dict[int, dict[str, Any]] = {}
    for r in range(1, world_size):
        path = run_json_path(run_dir / RANKS_DIR / f"rank{r}")
        try:
            found[r] = rank_summary(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return found


def wait_for_ranks(run_dir: Path, world_size: int, wait_s: float = FINISH_WAIT_S
                   ) -> dict[int, dict[str, Any]]:
    """Rank records, polled until none on this host is still running (or ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    me = socket.gethostname()
    while True:
        records = read_rank_records(run_dir, world_size)
        pending = [r for r, s in records.items() if s["status"] == "running"
                   and s.get("host") == me and s.get("pid") and pid_alive(int(s["pid"]))]
        if not pending or time.monotonic() >= deadline:
            return records
        time.sleep(0.2)


def finish_root_record(root: Path, world_size: int, rank: int) -> dict[str, Any] | None:
    """The whole run's record completed by rank ``rank`` (not 0) after its own end, when
    that record does not show it: rank 0 (its owner) is gone, or rank 0 combined the run
    before this rank had ended (it waits ``FINISH_WAIT_S`` for its peers, and a loaded
    machine can take longer to finish a rank).

    Rank 0 gone: the root record on this file system still says ``running`` and its lock
    is free (the kernel released it: rank 0's process ended without finishing). Rank 0
    too early: the record lists this rank as still running. Either way this rank takes
    the lock (one writer at a time), combines every rank's record as rank 0 does
    (``combine``; a lost rank 0 is named as the cause) and writes the root run.jsonc.
    Returns the combined result, or None when there was nothing to do."""
    path = run_json_path(root)
    if _root_needs(path, rank) is None:
        return None
    lock = RunLock(root, wait_s=FINISH_WAIT_S)
    try:
        lock.acquire()
    except RunDirError:
        return None
    try:
        found = _root_needs(path, rank, locked=True)  # again, now that no one else writes it
        if found is None:
            return None
        meta, rank0 = found
        records = wait_for_ranks(root, world_size)
        records[0] = rank0
        combined = combine(world_size, records)
        meta.update(combined_fields(meta, combined, finished_by_rank=rank))
        write_json(path, meta)
        return combined
    finally:
        lock.release()


def combined_fields(meta: dict[str, Any], combined: dict[str, Any],
                    **extra: Any) -> dict[str, Any]:
    """The run.jsonc keys a ``combine`` result sets on the whole run's record ``meta``:
    ``status``, ``error`` and ``distributed`` with ``ranks``, ``failed_ranks``,
    ``missing_ranks`` (and ``extra``)."""
    distributed = dict(meta.get("distributed") or {})
    distributed.update(ranks=combined["ranks"], failed_ranks=combined["failed_ranks"],
                       missing_ranks=combined["missing_ranks"], **extra)
    return {"status": combined["status"], "error": combined["error"],
            "distributed": distributed}


def _root_needs(path: Path, rank: int, locked: bool = False
                ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(root record, rank 0's summary) when the root record needs this rank's completion
    (``finish_root_record``), else None. ``locked``: this process holds the root's lock."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    if meta.get("status") == "running":
        if not locked and lock_held(path.parent) is not False:
            return None  # rank 0 is alive and owns the record
        return meta, rank_summary(meta)
    listed = {r.get("rank"): r for r in (meta.get("distributed") or {}).get("ranks") or []
              if isinstance(r, dict)}
    mine = listed.get(rank) or {}
    if listed.get(0) and (mine.get("status") == "running"
                          or (mine.get("error") or {}).get("type") == "RankNotResponding"):
        return meta, listed[0]
    return None


def _peer_error(error: Any) -> bool:
    if not isinstance(error, dict):
        return False
    if error.get("type") in _PEER_ERRORS:
        return True
    message = str(error.get("message") or "").lower()
    return any(m in message for m in _PEER_MESSAGES)


def combine(world_size: int, records: dict[int, dict[str, Any]],
            host: str | None = None) -> dict[str, Any]:
    """The whole run's status from every rank's summary (``records`` by rank).

    A record still ``running`` whose process is gone on ``host`` (this machine) is a lost
    rank (killed or crashed). Status: ``complete`` only when every rank completed; else
    the rank that caused the end is named: a lost rank, then a rank failed (or out of
    memory) for its own reason, then one failed by a peer's error; ``interrupted`` when
    the ranks that did not complete were interrupted. Returns {"status", "error" (with
    the culprit's "rank"), "ranks", "failed_ranks" (lost or failed for their own reason),
    "missing_ranks" (no record found)}. A rank still running when the others ended (a
    hung rank: its peers' collectives timed out) comes after a failure of its own and
    before a failure caused by a peer."""
    host = host or socket.gethostname()
    ranks = []
    for r in range(world_size):
        s = dict(records.get(r) or {"rank": r, "status": None})
        if (s.get("status") == "running" and s.get("host") == host and s.get("pid")
                and not pid_alive(int(s["pid"]))):
            s["status"] = "failed"
            s["error"] = {"type": "RankLost", "message": f"rank {r} (pid {s['pid']}) ended "
                          f"without finishing: killed or crashed"}
            s["lost"] = True
        ranks.append(s)
    missing = [s["rank"] for s in ranks if s.get("status") is None]
    bad = [s for s in ranks if s.get("status") not in ("complete", None)]

    def culprit_order(s: dict[str, Any]) -> int:
        if s.get("lost"):
            return 0
        if s["status"] in ("failed", "oom") and not _peer_error(s.get("error")):
            return 1
        if s["status"] == "running":  # still running when its peers ended: hung
            return 2
        if s["status"] in ("failed", "oom"):
            return 3
        return 4  # interrupted

    if not bad:  # (a rank without a record here is listed in missing_ranks)
        status, error = "complete", None
    else:
        first = sorted(bad, key=lambda s: (culprit_order(s), s["rank"]))[0]
        failed_peers = any(s["status"] in ("failed", "oom") for s in bad)
        if first["status"] == "running":
            status = "failed" if failed_peers else "interrupted"
            first["error"] = {"type": "RankNotResponding", "message": f"rank {first['rank']} "
                              f"was still running when the other ranks had ended"}
        elif first["status"] == "interrupted":
            status = "interrupted"
        else:
            status = first["status"]
        err = first.get("error") or {}
        others = [s["rank"] for s in bad if s is not first]
        tail = f" (also not complete: rank {', '.join(map(str, others))})" if others else ""
        what = "was lost" if first.get("lost") else (
            "did not respond" if first["status"] == "running" else first["status"])
        error = {"type": err.get("type") or "RankFailed",
                 "message": f"rank {first['rank']} {what}: "
                            f"{err.get('message') or 'no error recorded'}{tail}",
                 "rank": first["rank"]}
    # the ranks that failed for their own reason (lost, own error, hung), not by a peer
    failed = [s["rank"] for s in bad if culprit_order(s) <= 1]
    if bad and first["status"] == "running" and status == "failed":
        failed.append(first["rank"])
    for s in ranks:
        s.pop("lost", None)
    return {"status": status, "error": error, "ranks": ranks, "failed_ranks": failed,
            "missing_ranks": missing}
