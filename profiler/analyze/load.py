"""Host load of two runs side by side, and the timing verdicts load can explain (pure).

Input: the ``host_load`` record of run.json (``profiler.collect.hostload``).
A timing verdict (timed rows of sections time and throughput) that says better or
worse is downgraded to ``inconclusive (load)`` when load can explain it: the run
that came out slower received a smaller share of the CPU it could use than the
faster run, by more than ``SHARE_MARGIN`` (relative). The CPU share of a run is
its own CPU time over the wall time, divided by the CPUs it could use
(``min(torch threads, logical CPUs)``): about 1 for a compute-bound run alone on
the machine, lower when other processes take turns on its CPUs. A slowdown by the
factor the share fell is what competition alone produces; a run slower although
it got as much CPU as its baseline is slower for its own reasons, and keeps its
verdict. Exact rows are never downgraded (load does not change what a
deterministic workload allocates). ``under_load`` (other processes' busy CPUs,
load average) decides the warnings.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from profiler.analyze.stats import BETTER, WORSE

INCONCLUSIVE = "inconclusive (load)"
LOAD_COLUMNS = ("item", "base", "new")
TIMING_SECTIONS = ("time", "throughput")
SHARE_MARGIN = 0.10


def _fmt_load(values: Any) -> str:
    if not isinstance(values, (list, tuple)) or not values:
        return ""
    return " / ".join(f"{float(v):.2f}" for v in values)


def _top(snapshot: Any) -> str:
    if not isinstance(snapshot, dict):
        return ""
    top = snapshot.get("top") or []
    busy = snapshot.get("other_busy_cores")
    names = ", ".join(f"{p.get('name')} {float(p.get('cores', 0)):.2f}" for p in top[:3])
    head = "" if busy is None else f"{float(busy):.2f} CPUs"
    return f"{head} ({names})" if names else head


def load_table(base: dict[str, Any], new: dict[str, Any]) -> pd.DataFrame:
    """Rows item / base / new (text): CPU, threads, governor, load averages before /
    during / after, other processes' CPU use, and the under-load flag."""
    sides = {"base": base.get("host_load") or {}, "new": new.get("host_load") or {}}

    def row(item: str, fn) -> dict[str, str]:
        out = {"item": item}
        for side, rec in sides.items():
            try:
                out[side] = "" if not rec else str(fn(rec))
            except (KeyError, TypeError, ValueError):
                out[side] = ""
        return out

    rows = [
        row("CPU model", lambda r: r.get("cpu_model") or ""),
        row("logical CPUs", lambda r: r.get("logical_cpus") or ""),
        row("torch threads (OMP_NUM_THREADS)",
            lambda r: f"{r['threads']['torch_threads']} ({r['threads'].get('OMP_NUM_THREADS')})"),
        row("frequency governor", lambda r: r.get("governor") or "not readable"),
        row("load average 1/5/15 min before", lambda r: _fmt_load(r.get("loadavg_before"))),
        row("load average 1 min, highest during",
            lambda r: f"{float(r['during']['loadavg_1m_max']):.2f}"),
        row("load average 1/5/15 min after", lambda r: _fmt_load(r.get("loadavg_after"))),
        row("other processes' CPUs busy during the run",
            lambda r: f"{float(r['during']['other_busy_cores']):.2f} "
                      f"({100 * float(r['during']['other_busy_share']):.0f}% of the machine)"),
        row("this run's CPUs busy", lambda r: f"{float(r['during']['own_busy_cores']):.2f}"),
        row("CPU share received (own CPU time / wall / usable CPUs)",
            lambda r: f"{cpu_share({'host_load': r}):.2f}"),
        row("busiest other processes before", lambda r: _top(r.get("before"))),
        row("busiest other processes after", lambda r: _top(r.get("after"))),
        row("measured under load", lambda r: "yes: " + "; ".join(r["under_load_reasons"])
            if r.get("under_load") else "no"),
    ]
    return pd.DataFrame(rows, columns=list(LOAD_COLUMNS))


def load_problem(base: dict[str, Any], new: dict[str, Any]) -> str:
    """Why timing verdicts cannot be trusted ("" when both runs were quiet)."""
    flagged = [side for side, meta in (("base", base), ("new", new))
               if (meta.get("host_load") or {}).get("under_load")]
    missing = [side for side, meta in (("base", base), ("new", new))
               if not meta.get("host_load")]
    if flagged:
        which = "both runs were" if len(flagged) == 2 else f"the {flagged[0]} run was"
        return (f"{which} measured under load (see 'Host load'); a timing verdict whose "
                f"slower run got less CPU share than the other is marked '{INCONCLUSIVE}'")
    if missing:
        return (f"host load not recorded for {' and '.join(missing)} (older run): timing "
                f"verdicts assume a quiet machine")
    return ""


def cpu_share(meta: dict[str, Any]) -> float | None:
    """Own CPU time / (wall time x CPUs the run could use); None without a record."""
    record = meta.get("host_load") or {}
    during = record.get("during") or {}
    own = during.get("own_busy_cores")
    threads = (record.get("threads") or {}).get("torch_threads") or 1
    cpus = record.get("logical_cpus") or threads
    if own is None:
        return None
    return float(own) / max(1, min(int(threads), int(cpus)))


def load_explains(base: dict[str, Any], new: dict[str, Any], new_slower: bool) -> bool:
    """True when load can explain that one run was slower (module docstring)."""
    slow, fast = (new, base) if new_slower else (base, new)
    slow_share, fast_share = cpu_share(slow), cpu_share(fast)
    if slow_share is None or fast_share is None:
        return bool((slow.get("host_load") or {}).get("under_load"))
    return slow_share < fast_share * (1 - SHARE_MARGIN)


def downgrade_timing(summary: pd.DataFrame, base: dict[str, Any],
                     new: dict[str, Any]) -> pd.DataFrame:
    """``summary`` with the timed better / worse rows of time and throughput that load
    can explain set to INCONCLUSIVE (the rule column says why)."""
    if summary.empty:
        return summary
    out = summary.copy()
    timed = (out["section"].isin(TIMING_SECTIONS) & (out["kind"] == "timed")
             & out["verdict"].isin([BETTER, WORSE]))
    # new slower: worse for a lower-is-better time, or worse for throughput alike
    new_slower = out["verdict"] == WORSE
    explains = {flag: load_explains(base, new, flag) for flag in (True, False)}
    hit = timed & new_slower.map(explains).astype(bool)
    why = {True: "the new run was slower and", False: "the base run was slower and"}
    out.loc[hit, "rule"] = (out.loc[hit, "rule"] + "; would be " + out.loc[hit, "verdict"]
                            + ", but " + new_slower[hit].map(why)
                            + f" got over {100 * SHARE_MARGIN:.0f}% less CPU share than the "
                            "other run")
    out.loc[hit, "verdict"] = INCONCLUSIVE
    return out
