"""Host load of two runs side by side, and the timing verdicts load can explain (pure).

Input: the ``host_load`` record of run.json (``profiler.collect.hostload``).
A timing verdict (timed rows of sections time and throughput) that says better or
worse is downgraded to ``inconclusive (load)`` when load can explain it: the run
that came out slower received a smaller share of the CPU it could use than the
faster run, by more than ``SHARE_MARGIN`` (relative). The CPU share of a run is
its own CPU time over the wall time, divided by the CPUs it could use
(``min(torch threads, CPUs it may run on)``): about 1 for a compute-bound run alone on
the machine, lower when other processes take turns on its CPUs. A slowdown by the
factor the share fell is what competition alone produces; a run slower although
it got as much CPU as its baseline is slower for its own reasons, and keeps its
verdict. On a CPU run whose steps.csv has ``cpu_ms`` the share is that of the
measured steps (the steps the timed rows compare: competition that came and went
during warm-up or the trace window does not count); otherwise, and on CUDA (where
the host also waits on the device, so a lower share is not competition alone),
it is the whole run's, from the record. Exact rows are never downgraded (load does not change what a
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


def _fmt_share(share: float | None) -> str:
    return "" if share is None else f"{share:.2f}"


def _top(snapshot: Any) -> str:
    if not isinstance(snapshot, dict):
        return ""
    top = snapshot.get("top") or []
    busy = snapshot.get("other_busy_cores")
    names = ", ".join(f"{p.get('name')} {float(p.get('cores', 0)):.2f}" for p in top[:3])
    head = "" if busy is None else f"{float(busy):.2f} CPUs"
    return f"{head} ({names})" if names else head


def load_table(base: dict[str, Any], new: dict[str, Any],
               samples: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Rows item / base / new (text): CPU, threads, governor, load averages before /
    during / after, other processes' CPU use, the CPU share of the whole run and of its
    measured steps (``samples``: each side's measured step rows), and the under-load
    flag."""
    sides = {"base": base.get("host_load") or {}, "new": new.get("host_load") or {}}
    metas = {"base": base, "new": new}
    samples = samples or {}

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
        row("CPUs the run could use (affinity)", lambda r: r.get("allowed_cpus") or ""),
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
            lambda r: f"{run_cpu_share({'host_load': r}):.2f}"),
        {"item": "CPU share of the measured steps (CPU runs: the load rule's figure)",
         **{side: _fmt_share(measured_cpu_share(metas[side], samples.get(side)))
            for side in sides}},
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


def _usable_cpus(record: dict[str, Any]) -> int:
    """min(torch threads, CPUs the process may run on: its affinity, else all)."""
    threads = (record.get("threads") or {}).get("torch_threads") or 1
    cpus = record.get("allowed_cpus") or record.get("logical_cpus") or threads
    return max(1, min(int(threads), int(cpus)))


def run_cpu_share(meta: dict[str, Any]) -> float | None:
    """The whole run's own CPU time / (wall time x usable CPUs); None without a record."""
    record = meta.get("host_load") or {}
    own = (record.get("during") or {}).get("own_busy_cores")
    return None if own is None else float(own) / _usable_cpus(record)


def measured_cpu_share(meta: dict[str, Any], samples: pd.DataFrame | None) -> float | None:
    """CPU share of the measured steps of a CPU run: sum of ``cpu_ms`` / sum of ``wall_ms``
    / usable CPUs over the rows of ``samples`` (``metrics.step_samples``) that have both;
    None for a CUDA run, without a host-load record, or without ``cpu_ms`` (older runs)."""
    record = meta.get("host_load") or {}
    if (meta.get("device") or {}).get("type") != "cpu" or not record or samples is None \
            or "cpu_ms" not in samples.columns:
        return None
    cpu = pd.to_numeric(samples["cpu_ms"], errors="coerce")
    wall = pd.to_numeric(samples["wall_ms"], errors="coerce")
    both = cpu.notna() & wall.notna() & (wall > 0)
    if not both.any():
        return None
    return float(cpu[both].sum() / wall[both].sum()) / _usable_cpus(record)


def cpu_share(meta: dict[str, Any], samples: pd.DataFrame | None = None) -> float | None:
    """The share the load rule compares (module docstring): the measured steps' where
    known, else the whole run's."""
    measured = measured_cpu_share(meta, samples)
    return measured if measured is not None else run_cpu_share(meta)


def load_explains(base: dict[str, Any], new: dict[str, Any], new_slower: bool,
                  shares: tuple[float | None, float | None] | None = None) -> bool:
    """True when load can explain that one run was slower (module docstring).
    ``shares``: (base, new) CPU shares, by default each run's ``cpu_share``."""
    b_share, n_share = shares if shares is not None else (cpu_share(base), cpu_share(new))
    slow, (slow_share, fast_share) = ((new, (n_share, b_share)) if new_slower
                                      else (base, (b_share, n_share)))
    if slow_share is None or fast_share is None:
        return bool((slow.get("host_load") or {}).get("under_load"))
    return slow_share < fast_share * (1 - SHARE_MARGIN)


def downgrade_timing(summary: pd.DataFrame, base: dict[str, Any], new: dict[str, Any],
                     samples: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """``summary`` with the timed better / worse rows of time and throughput that load
    can explain set to INCONCLUSIVE (the rule column says why). ``samples``: the
    measured step rows of each side ("base", "new"), for the measured steps' share."""
    if summary.empty:
        return summary
    samples = samples or {}
    shares = (cpu_share(base, samples.get("base")), cpu_share(new, samples.get("new")))
    out = summary.copy()
    timed = (out["section"].isin(TIMING_SECTIONS) & (out["kind"] == "timed")
             & out["verdict"].isin([BETTER, WORSE]))
    # new slower: worse for a lower-is-better time, or worse for throughput alike
    new_slower = out["verdict"] == WORSE
    explains = {flag: load_explains(base, new, flag, shares) for flag in (True, False)}
    hit = timed & new_slower.map(explains).astype(bool)
    why = {True: "the new run was slower and", False: "the base run was slower and"}
    numbers = ("" if None in shares else
               f" (CPU share {shares[0]:.2f} base, {shares[1]:.2f} new)")
    out.loc[hit, "rule"] = (out.loc[hit, "rule"] + "; would be " + out.loc[hit, "verdict"]
                            + ", but " + new_slower[hit].map(why)
                            + f" got over {100 * SHARE_MARGIN:.0f}% less CPU share than the "
                            "other run" + numbers)
    out.loc[hit, "verdict"] = INCONCLUSIVE
    return out
