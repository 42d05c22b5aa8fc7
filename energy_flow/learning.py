"""Learning figures of a training run: the loss trend, completion, and the learning-curves plot.

A run is a list of per-step records as ``python -m energy_flow train --jsonl`` writes them
(keys: step, loss (None when non-finite), ms, flows_created, flows_completed, skipped).
``summarize`` is pure; ``plot_curves`` is the only function that draws.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from energy_flow.runtime import atomic_write

FIRST_STEPS = 20  # the loss criterion: mean of the last LAST_STEPS <= RATIO_LIMIT x first
LAST_STEPS = 50
RATIO_LIMIT = 0.7
COMPLETION_LIMIT = 0.5  # completed / created over the last LAST_STEPS steps
TIME_STEPS = 20  # step-time figure: median of the last TIME_STEPS over the first measured ones
TIME_SKIP = 2  # steps left out before the first measured ones (start-up)


def completion(record: dict) -> float:
    """Fraction of the flows created in a step that completed on a plane (not projected)."""
    created = record.get("flows_created") or 0
    return record.get("flows_completed", 0) / created if created else 0.0


def windows(steps: int) -> tuple[int, int]:
    """(first, last) step counts of the loss criterion: 20 and 50, or a fifth of a shorter run
    each (10 and 10 for 50 steps)."""
    fifth = max(1, steps // 5)
    return min(FIRST_STEPS, fifth), min(LAST_STEPS, fifth)


def summarize(records: list[dict], first: int | None = None, last: int | None = None) -> dict:
    """Figures of a run. Output keys (losses are MSE values, times milliseconds):

    steps, skipped, first, last (window sizes, default ``windows(steps)``); first_loss /
    last_loss: mean surface loss (the MSE against the target; the whole objective when a
    record has no surface_loss) of the first ``first`` and the last ``last`` finite-loss
    steps; first_objective / last_objective: the same for the optimized loss (surface loss
    plus the completion term); ratio = last_loss / first_loss; completion_first /
    completion_last: completed / created summed over those steps; flows_created_first /
    flows_created_last / flows_created_max: flows per step; ms_first: median step time of
    steps TIME_SKIP+1 .. TIME_SKIP+TIME_STEPS; ms_last: median of the last TIME_STEPS;
    ms_ratio = ms_last / ms_first; loss_ok / completion_ok: the learning criterion.
    """
    if not records:
        raise ValueError("no training steps to summarize")
    default_first, default_last = windows(len(records))
    first = default_first if first is None else first
    last = default_last if last is None else last
    finite = [r for r in records if r.get("loss") is not None and not r.get("skipped")]
    head, tail = finite[:first], finite[-last:]

    def mean_loss(rows: list[dict], key: str = "surface_loss") -> float:
        values = [r[key] if r.get(key) is not None else r["loss"] for r in rows]
        return statistics.fmean(values) if values else float("nan")

    def done(rows: list[dict]) -> float:
        created = sum(r["flows_created"] for r in rows)
        return sum(r["flows_completed"] for r in rows) / created if created else 0.0

    first_loss, last_loss = mean_loss(head), mean_loss(tail)
    ratio = last_loss / first_loss if first_loss else float("nan")
    timed = records[TIME_SKIP:] if len(records) > TIME_SKIP + 1 else records
    ms_first = statistics.median(r["ms"] for r in timed[:TIME_STEPS])
    ms_last = statistics.median(r["ms"] for r in timed[-TIME_STEPS:])
    return {
        "steps": len(records), "skipped": sum(1 for r in records if r.get("skipped")),
        "first": first, "last": last,
        "first_loss": first_loss, "last_loss": last_loss, "ratio": ratio,
        "first_objective": mean_loss(head, "loss"), "last_objective": mean_loss(tail, "loss"),
        "completion_first": done(head), "completion_last": done(tail),
        "flows_created_first": statistics.fmean(r["flows_created"] for r in records[:first]),
        "flows_created_last": statistics.fmean(r["flows_created"] for r in records[-last:]),
        "flows_created_max": max(r["flows_created"] for r in records),
        "ms_first": ms_first, "ms_last": ms_last, "ms_ratio": ms_last / ms_first,
        "loss_ok": ratio <= RATIO_LIMIT, "completion_ok": done(tail) >= COMPLETION_LIMIT,
    }


def format_summary(name: str, s: dict) -> str:
    return (
        f"{name}: {s['steps']} steps ({s['skipped']} skipped); mean surface loss first "
        f"{s['first']} {s['first_loss']:.4f}, last {s['last']} {s['last_loss']:.4f}, ratio "
        f"{s['ratio']:.3f} "
        f"(<= {RATIO_LIMIT}: {'yes' if s['loss_ok'] else 'no'}); completed on a plane "
        f"{s['completion_first']:.1%} -> {s['completion_last']:.1%} "
        f"(>= {COMPLETION_LIMIT:.0%}: {'yes' if s['completion_ok'] else 'no'}); flows per step "
        f"{s['flows_created_first']:.0f} -> {s['flows_created_last']:.0f} (max "
        f"{s['flows_created_max']}); step time {s['ms_first']:.0f} -> {s['ms_last']:.0f} ms "
        f"(x{s['ms_ratio']:.2f})"
    )


def read_records(path: str | os.PathLike) -> list[dict]:
    """Per-step records from a JSONL file (lines that are not step records are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number}: not a JSON line") from None
        if isinstance(record, dict) and "step" in record and "flows_created" in record:
            records.append(record)
    if not records:
        raise ValueError(f"{path}: no step records (write them with train --jsonl)")
    return records


def _surface_loss(record: dict) -> float:
    """The MSE part of the loss (the whole loss for records without it); nan when skipped."""
    for key in ("surface_loss", "loss"):
        if record.get(key) is not None:
            return record[key]
    return float("nan")


def plot_curves(runs: dict[str, list[dict]], out: str | os.PathLike, window: int = 10) -> None:
    """PNG with two panels per step: surface loss (raw and a ``window``-step moving mean) and the
    fraction of created flows completed on a plane, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax_loss, ax_done) = plt.subplots(1, 2, figsize=(11, 4))
    for name, records in runs.items():
        steps = [r["step"] for r in records]
        losses = [_surface_loss(r) for r in records]
        line, = ax_loss.plot(steps, losses, alpha=0.3, linewidth=0.8)
        smooth = [statistics.fmean(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax_loss.plot(steps, smooth, color=line.get_color(), label=f"{name} ({window}-step mean)")
        ax_done.plot(steps, [completion(r) for r in records], color=line.get_color(), label=name)
    ax_loss.set(xlabel="training step", ylabel="surface loss (MSE)", title="loss")
    ax_done.set(xlabel="training step", ylabel="completed / created", ylim=(0, 1.02),
                title="flows completed on a plane")
    for ax in (ax_loss, ax_done):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right" if ax is ax_loss else "lower right")
    fig.tight_layout()
    atomic_write(Path(out), lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
