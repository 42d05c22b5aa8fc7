"""Run metadata side by side, and whether two runs may be compared at all (pure)."""

from __future__ import annotations

from typing import Any

import pandas as pd

METADATA_COLUMNS = ("key", "base", "new", "differs")
# Keys that differ between any two runs and are not a difference worth highlighting.
_EXPECTED_TO_DIFFER = ("name", "started_at", "ended_at", "command")


def flatten(meta: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested run.json -> {"config.model.batch_size": "8", ...} (lists joined by spaces)."""
    out: dict[str, str] = {}
    for key in sorted(meta):
        value = meta[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = " ".join(str(v) for v in value)
        else:
            out[name] = "" if value is None else str(value)
    return out


def metadata_diff(base: dict[str, Any], new: dict[str, Any]) -> pd.DataFrame:
    """Columns ``key``, ``base``, ``new`` (strings; "" when absent) and ``differs`` (bool,
    False for keys that always differ such as name and start time). Differing keys first."""
    fb, fn = flatten(base), flatten(new)
    rows = []
    for key in sorted(set(fb) | set(fn)):
        b, n = fb.get(key, ""), fn.get(key, "")
        expected = key.split(".", 1)[0] in _EXPECTED_TO_DIFFER
        rows.append({"key": key, "base": b, "new": n, "differs": b != n and not expected})
    table = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    return table.sort_values(["differs", "key"], ascending=[False, True],
                             kind="stable").reset_index(drop=True)


def comparability_problems(base: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Differences that make two runs not comparable: preset, device, lattice size, number
    of ranks (a 1-rank against an N-rank run is the scaling comparison, with --force).

    Each problem names the field and both values, e.g.
    ``"preset differs: debug vs experiment"``.
    """
    problems = []
    checks = (
        ("preset", _get(base, "config.preset", "config.model.preset"),
         _get(new, "config.preset", "config.model.preset")),
        ("device type", _get(base, "device.type"), _get(new, "device.type")),
        ("device name", _get(base, "device.name"), _get(new, "device.name")),
        ("lattice (W x H x D)", _lattice(base), _lattice(new)),
        ("world size (ranks)", _get(base, "distributed.world_size") or 1,
         _get(new, "distributed.world_size") or 1),
    )
    for label, b, n in checks:
        if b != n:
            problems.append(f"{label} differs: {b} vs {n}")
    return problems


def _lattice(meta: dict[str, Any]) -> str | None:
    dims = [_get(meta, f"config.model.lattice_{d}") for d in ("width", "height", "depth")]
    return None if all(d is None for d in dims) else " x ".join(str(d) for d in dims)


def _get(meta: dict[str, Any], *paths: str) -> Any:
    for path in paths:
        node: Any = meta
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return None
