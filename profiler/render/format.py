"""Number formatting shared by the Markdown and HTML renderers (same text in both)."""

from __future__ import annotations

import math

MISSING = "n/a"
_BYTE_UNITS = ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def _missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def fmt_value(value: object, unit: str) -> str:
    """``value`` in ``unit`` for people: bytes scaled to KiB / MiB / GiB, times in ms."""
    if _missing(value):
        return MISSING
    v = float(value)  # type: ignore[arg-type]
    if unit == "bytes":
        for scale, name in _BYTE_UNITS:
            if abs(v) >= scale:
                return f"{v / scale:.2f} {name}"
        return f"{v:.0f} B"
    if unit == "ms":
        if abs(v) >= 10_000:
            return f"{v / 1e3:.2f} s"
        return f"{v:.3f} ms" if abs(v) < 10 else f"{v:.1f} ms"
    if unit == "us":
        return f"{v:.1f} us"
    if unit in ("count", "W", "samples/s", "flow-steps/s"):
        return f"{v:,.1f} {unit}" if unit != "count" else f"{v:,.1f}"
    return f"{v:.4g} {unit}".strip()


def fmt_delta(value: object, unit: str) -> str:
    if _missing(value):
        return MISSING
    v = float(value)  # type: ignore[arg-type]
    sign = "+" if v > 0 else ("-" if v < 0 else "")
    return sign + fmt_value(abs(v), unit)


def fmt_ratio(value: object) -> str:
    return MISSING if _missing(value) else f"{float(value):.3f}x"  # type: ignore[arg-type]


def fmt_ci(low: object, high: object) -> str:
    if _missing(low) or _missing(high):
        return MISSING
    return f"[{float(low):.3f}, {float(high):.3f}]"  # type: ignore[arg-type]


def fmt_pct(value: object) -> str:
    return MISSING if _missing(value) else f"{float(value):.1f}%"  # type: ignore[arg-type]


def summary_cells(row: dict) -> dict[str, str]:
    """The text of one summary row as both renderers print it."""
    unit = str(row["unit"])
    return {
        "metric": str(row["metric"]),
        "base": fmt_value(row["base"], unit),
        "new": fmt_value(row["new"], unit),
        "delta": fmt_delta(row["delta"], unit),
        "ratio": fmt_ratio(row["ratio"]),
        "ci": fmt_ci(row["ci_low"], row["ci_high"]),
        "noise": fmt_pct(row["noise_pct"]),
        "verdict": str(row["verdict"]),
        "kind": str(row.get("kind", "")),
        "rule": str(row.get("rule", "")),
        "gated": "yes" if row["gated"] else "",
    }


SUMMARY_HEADERS = {
    "metric": "metric", "base": "base", "new": "new", "delta": "delta", "ratio": "new/base",
    "ci": "95% CI of ratio", "noise": "noise t", "verdict": "verdict", "kind": "kind",
    "rule": "rule applied", "gated": "gated",
}
