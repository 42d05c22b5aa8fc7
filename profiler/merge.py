"""``python -m profiler merge``: the run directories that the nodes of a multi-node run
wrote on their own file systems (each node's ``--out``), combined into one.

Each source is ``<out>/<name>/`` of one node: the node of rank 0 holds the run's root
files (run.jsonc, steps.csv, ...), every node its ranks' ``ranks/rank<r>/`` and trace
files ``rank<r>.<ts>.pt.trace.json.gz``. The merge copies them into a new directory
(built beside it, then renamed: never half-written), refuses a rank found twice or
sources of different runs, and rewrites run.jsonc's whole-run status and
``distributed.ranks`` from every rank's own record.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from profiler.collect.distributed import combine, combined_fields, rank_summary
from profiler.errors import RunDirError
from profiler.rundir import RANKS_DIR, TRACE_SUFFIXES, run_json_path, write_json


def _read(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: cannot read ({exc})") from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return meta


def _trace_rank(name: str) -> int | None:
    head = name.split(".", 1)[0]
    return int(head[4:]) if head.startswith("rank") and head[4:].isdigit() else None


def merge_runs(sources: list[Path | str], dest: Path | str) -> dict[str, Any]:
    """Merge ``sources`` into ``dest`` (which must not exist); the merged run.jsonc."""
    srcs = [Path(s) for s in sources]
    dest = Path(dest)
    if not srcs:
        raise RunDirError("merge needs at least one source run directory")
    if dest.exists():
        raise RunDirError(f"{dest} already exists")
    for s in srcs:
        if not s.is_dir():
            raise RunDirError(f"{s} is not a directory")
    roots = [s for s in srcs if run_json_path(s).is_file()]
    if len(roots) != 1:
        raise RunDirError(f"exactly one source must hold rank 0's run.jsonc; found "
                          f"{len(roots)} ({', '.join(map(str, roots)) or 'none'})")
    root = roots[0]
    meta = _read(run_json_path(root))
    info = meta.get("distributed") or {}
    world = info.get("world_size")
    if not isinstance(world, int) or world < 1:
        raise RunDirError(f"{run_json_path(root)}: not a multi-rank run (no distributed."
                          f"world_size)")
    owner: dict[int, Path] = {}
    records: dict[int, dict[str, Any]] = {0: rank_summary(meta)}
    for s in srcs:
        ranks = s / RANKS_DIR
        for d in sorted(ranks.iterdir()) if ranks.is_dir() else []:
            r = int(d.name[4:]) if d.name.startswith("rank") and d.name[4:].isdigit() else None
            if r is None:
                continue
            if r in owner:
                raise RunDirError(f"rank {r} is in both {owner[r]} and {s}")
            if r >= world:
                raise RunDirError(f"{d}: rank {r} is outside world size {world}")
            rec = _read(run_json_path(d))
            if rec.get("name") != meta.get("name"):
                raise RunDirError(f"{d}: run {rec.get('name')!r}, not {meta.get('name')!r}")
            owner[r] = s
            records[r] = rank_summary(rec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for item in root.iterdir():
            if item.name == RANKS_DIR or item.name.endswith(TRACE_SUFFIXES):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        seen: dict[str, Path] = {}
        for s in srcs:
            for item in s.iterdir():
                if item.is_file() and item.name.endswith(TRACE_SUFFIXES) \
                        and _trace_rank(item.name) is not None:
                    if item.name in seen:
                        raise RunDirError(f"trace {item.name} is in both {seen[item.name]} "
                                          f"and {s}")
                    seen[item.name] = s
                    shutil.copy2(item, tmp / item.name)
        for r, s in owner.items():
            shutil.copytree(s / RANKS_DIR / f"rank{r}", tmp / RANKS_DIR / f"rank{r}")
        meta.update(combined_fields(meta, combine(world, records)))
        write_json(run_json_path(tmp), meta)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
