"""A report as a list of blocks, rendered identically by ``markdown`` and ``html``.

Blocks hold plain text only; each renderer escapes it for its own format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from profiler.analyze.load import INCONCLUSIVE
from profiler.analyze.metrics import CHANGED, EQUAL
from profiler.analyze.report import Report, regressions
from profiler.analyze.stats import BETTER, NOISE, WORSE
from profiler.render.format import (
    MISSING,
    SUMMARY_HEADERS,
    fmt_delta,
    fmt_pct,
    fmt_ratio,
    fmt_value,
    summary_cells,
)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Alert:
    text: str


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    classes: list[str] = field(default_factory=list)  # per row: worse | better | differs | ""


@dataclass(frozen=True)
class Image:
    name: str  # key of report_plots()
    caption: str


Block = Heading | Para | Alert | Table | Image

SECTIONS = (
    ("time", "Step time"), ("throughput", "Throughput"),
    ("memory", "Memory (tensors; process RSS and heap for context)"),
    ("work", "Work done per step (deterministic)"),
    ("category", "Peak memory per category"), ("allocations", "Allocations per category"),
    ("distributed", "Communication and balance across ranks (per step)"),
)


def build_document(report: Report, plots: set[str], gate: float | None = None) -> list[Block]:
    """Every block of the report in order; ``plots`` names the plots that exist."""
    names = report.names
    doc: list[Block] = [Heading(1, f"Performance report: {names['base']} vs {names['new']}")]
    doc += [Alert(w) for w in report.warnings]
    doc += [Heading(2, "Runs"), _runs_table(report), Para(_method(report, gate))]
    doc += _load(report)
    doc += _overview(report.summary, gate)
    if report.unrecorded:
        doc.append(Para("Not recorded by either run (left out): "
                        + ", ".join(report.unrecorded) + "."))
    growth = {s: report.growth[s]["verdict"] + (
        f" (needs {report.growth[s]['steps_needed']} measured steps)"
        if report.growth[s]["verdict"] == "insufficient data"
        and report.growth[s].get("steps_needed") else "") for s in ("base", "new")}
    doc.append(Para(f"Memory growth verdict: base {growth['base']}, new {growth['new']} "
                    f"(details under 'Memory growth per step')."))
    summary = report.summary
    for section, title in SECTIONS:
        rows = summary[summary["section"] == section]
        if rows.empty:
            continue
        doc += [Heading(2, title), _summary_table(rows)]
        if section == "time" and "step_time" in plots:
            doc.append(Image("step_time", "Measured step times by step number (base and new)"))
        if section == "category" and "memory_over_steps" in plots:
            doc.append(Image("memory_over_steps", "Peak tensor memory per region within each "
                             "step of the trace window (the only steps with per-category "
                             "data)"))
        if section == "category" and "category_peaks" in plots:
            doc.append(Image("category_peaks", "Peak memory per region category"))
    doc += _ranks(report, plots)
    doc += _pool(report)
    doc += _nvml(report)
    doc += _growth(report)
    doc += _operators(report)
    doc += [Heading(2, "Run metadata"),
            Para("Highlighted rows differ between the runs (name, times and command "
                 "always differ and are not highlighted). attribution.by_category.* are the "
                 "net bytes of each category over the trace window (allocated minus freed "
                 "in the window): negative when the window frees more of a category than "
                 "it allocates, e.g. tensors allocated before the window and freed in it. "
                 "device.autocast is what the trainer applied (bf16 on CUDA only)."),
            _frame_table(report.metadata[["key", "base", "new"]],
                         ["differs" if d else "" for d in report.metadata["differs"]])]
    return doc


def _runs_table(report: Report) -> Table:
    rows = []
    for side in ("base", "new"):
        rows.append([side, report.names[side], report.paths[side], report.statuses[side],
                     str(report.warmup_steps[side]), str(len(report.step_times[side])),
                     report.measured_rules[side], str(report.skipped_steps[side]),
                     str(report.nonfinite.get(side, 0))])
    return Table(["", "run", "path", "status", "warm-up steps", "measured steps",
                  "measured = ", "skipped (non-finite)", "NaN / inf values left out"], rows,
                 ["" if report.statuses[s] == "complete" else "worse" for s in ("base", "new")])


def _method(report: Report, gate: float | None) -> str:
    s = report.stats
    time_rows = report.summary[report.summary["section"].isin(["time", "throughput"])]
    noisy = time_rows["noise_pct"].dropna()
    noisy_text = f"{noisy.max():.1f}%" if not noisy.empty else MISSING
    text = (
        "Two kinds of metric. Exact metrics (kind 'exact': tensor memory and allocations, "
        "per-category memory of the trace window, work per step) are deterministic for "
        "the same config and seed: they are compared step by step on the steps both runs "
        "measured; equal is 'equal', and any difference is better or worse (or 'changed' "
        "for work done) with its size, however few steps. Timed metrics (kind 'timed': "
        "times, throughput, RSS, process heap) use the measured steps only (see 'measured "
        f"= ' above); each compares a median or p90 with a {s.confidence:.0%} percentile "
        f"bootstrap interval of new/base ({s.resamples} resamples, seed {s.seed}; none with "
        f"fewer than {s.min_samples} steps on either side). With the noise threshold t of "
        "the row (column 'noise'), a lower-is-better metric is better when new/base < "
        "1/(1+t) and worse when new/base > 1+t, each only when the interval lies on the "
        "same side of 1; the 'rule' column states this with the row's numbers. "
        f"t = max({s.noisy_floor:.0%}, {s.drift_factor:g} x the larger within-run drift "
        f"between the first and second half of a run) = up to {noisy_text} here; time "
        f"differences under {s.min_ms:g} ms and byte differences under {s.min_bytes:,} "
        "are noise whatever the ratio. Process RSS and heap count every allocation of the "
        "process (profiler buffers included): context, never gated. A timing verdict is "
        f"'{INCONCLUSIVE}' when the slower run received over 10% less of the CPU it could use "
        "than the other (competition explains such a slowdown; on CPU runs the share of the "
        "measured steps themselves, from each step's process CPU time; see 'Host load')."
    )
    if gate is not None:
        text += (f" Regression gate: a gated metric worse by more than {gate:.1%} "
                 f"beyond noise fails the comparison.")
    return text


def _overview(summary: pd.DataFrame, gate: float | None) -> list[Block]:
    counts = summary["verdict"].value_counts()
    parts = [f"{int(counts.get(v, 0))} {v}"
             for v in (WORSE, BETTER, NOISE, EQUAL, CHANGED, INCONCLUSIVE) if counts.get(v)]
    blocks: list[Block] = [Heading(2, "Verdict"), Para(f"{len(summary)} metrics: "
                                                      + ", ".join(parts) + ".")]
    if gate is not None:
        failed = regressions(summary, gate)
        if failed.empty:
            blocks.append(Para(f"Regression gate ({gate:.1%}): passed."))
        else:
            blocks.append(Alert(f"Regression gate ({gate:.1%}) failed: "
                                + ", ".join(failed["metric"]) + "."))
    notable = summary[summary["verdict"].isin([WORSE, BETTER, CHANGED])]
    if not notable.empty:
        blocks.append(_summary_table(notable))
    return blocks


def _summary_table(rows: pd.DataFrame) -> Table:
    cells = [summary_cells(r) for r in rows.to_dict("records")]
    keys = list(SUMMARY_HEADERS)
    return Table([SUMMARY_HEADERS[k] for k in keys], [[c[k] for k in keys] for c in cells],
                 [c["verdict"] if c["verdict"] in (WORSE, BETTER) else "" for c in cells])


def _frame_table(frame: pd.DataFrame, classes: list[str] | None = None) -> Table:
    rows = [["" if pd.isna(v) else str(v) for v in row] for row in frame.itertuples(index=False)]
    return Table([str(c) for c in frame.columns], rows, classes or [])


def _ranks(report: Report, plots: set[str]) -> list[Block]:
    """Per-rank figures of multi-rank runs (``profiler.render.ranks``)."""
    from profiler.render import ranks

    multi = [s for s in ("base", "new") if len(report.ranks.get(s, [])) >= 2]
    if not multi and report.scaling is None:
        return []
    doc: list[Block] = [Heading(2, "Ranks")]
    doc.append(Para("compute = step time - communication the rank waited for (after its "
                    "backward finished); under DDP a straggler shows there, its peers wait "
                    "in the all-reduce. comm = DDP's gradient all-reduce per step (timed by a "
                    "communication hook, untraced steps); comm share = all-reduce time / "
                    "step time; overlap = part of the all-reduce that ran during backward "
                    "compute (from the hook's timings: all-reduce time before backward "
                    "ended); comm (trace) = collective operators per traced step in the "
                    "trace window; overlap (trace) = part of the collectives' time in the trace "
                    "during which the rank's autograd engine ran backward nodes."))
    for side in ("base", "new"):
        table = report.ranks.get(side)
        if table is None or table.empty:
            continue
        doc += [Heading(3, f"{side}: {report.names[side]}"),
                Table(ranks.RANK_HEADERS, ranks.rank_rows(table)),
                Para(ranks.straggler_text(report.names[side], report.stragglers[side]))]
        top = report.collectives.get(side)
        if top is not None and not top.empty:
            doc.append(Table(["collective (trace window)", "ranks", "calls", "total", "per call"],
                             [[r.name, str(r.ranks), str(r.calls), fmt_value(r.total_ms, "ms"),
                               fmt_value(r.ms_per_call, "ms")] for r in top.itertuples()]))
    if "ranks" in plots:
        doc.append(Image("ranks", "Median compute and communication wait per rank"))
    if report.scaling is not None:
        doc.append(Para(ranks.scaling_text(report.scaling, report.names)))
    return doc


def _pool(report: Report) -> list[Block]:
    if report.pool.empty:
        return []
    rows = []
    for r in report.pool.to_dict("records"):
        rows.append([str(r["category"]),
                     fmt_value(r["base_hits"], "count"), fmt_value(r["base_misses"], "count"),
                     fmt_pct(100 * r["base_hit_rate"]),
                     fmt_value(r["new_hits"], "count"), fmt_value(r["new_misses"], "count"),
                     fmt_pct(100 * r["new_hit_rate"])])
    return [Heading(2, "Pool statistics (measured steps)"),
            Table(["category", "base hits", "base misses", "base hit rate", "new hits",
                   "new misses", "new hit rate"], rows)]


def _nvml(report: Report) -> list[Block]:
    blocks: list[Block] = [Heading(2, "NVML (device memory, power)")]
    rows = report.summary[report.summary["section"] == "nvml"]
    if not rows.empty:
        blocks.append(_summary_table(rows))
    for side in ("base", "new"):
        note = report.nvml_notes[side]
        if note:
            blocks.append(Para(f"{side}: NVML unavailable ({note})."))
        recon = report.nvml_reconcile[side]
        if not recon.empty:
            table = [[str(r["gpu"]), fmt_value(r["used_bytes"], "bytes"),
                      fmt_value(r["torch_allocated_bytes"], "bytes"),
                      fmt_value(r["torch_cache_bytes"], "bytes"),
                      fmt_value(r["non_torch_bytes"], "bytes"),
                      fmt_delta(r["residual_bytes"], "bytes")] for r in recon.to_dict("records")]
            blocks += [Para(f"{side}: device memory at the peak of NVML used memory = "
                            f"allocated + allocator cache + non-PyTorch memory:"),
                       Table(["gpu", "NVML used", "allocated", "allocator cache",
                              "non-PyTorch", "residual"], table)]
    return blocks


def _growth(report: Report) -> list[Block]:
    g = report.growth
    rows = [
        ["metric", str(g["base"]["metric"]), str(g["new"]["metric"])],
        ["measured steps used", str(g["base"]["steps"]), str(g["new"]["steps"])],
    ]
    for key, label in (("start_bytes", "start (median of first quarter)"),
                       ("end_bytes", "end (median of last quarter)"),
                       ("growth_bytes_per_step", "growth per step (least squares)"),
                       ("growth_bytes_total", "fitted growth over the run"),
                       ("threshold_bytes", "leak threshold")):
        fmt = fmt_delta if key.startswith("growth") else fmt_value
        rows.append([label, fmt(g["base"][key], "bytes"), fmt(g["new"][key], "bytes")])
    rows.append(["verdict", str(g["base"]["verdict"]), str(g["new"]["verdict"])])
    leak = ["worse" if g[s]["verdict"] == "leak" else "" for s in ("base", "new")]
    return [Heading(2, "Memory growth per step"),
            Table(["", "base", "new"], rows, [""] * (len(rows) - 1)
                  + ["worse" if any(leak) else ""])]


def _operators(report: Report) -> list[Block]:
    ops = report.operators
    if ops.empty:
        return [Heading(2, "Top operators"), Para("No operator tables (operators.csv) in "
                                                   "either run.")]
    scope = "per traced step" if report.operators_per_step else "over the traced window"
    cuda = report.device_type == "cuda"
    rows = []
    for r in ops.to_dict("records"):
        row = [str(r["name"]), fmt_value(r["base_count"], "count"),
               fmt_value(r["new_count"], "count"),
               fmt_value(r["base_self_us"] / 1e3, "ms"), fmt_value(r["new_self_us"] / 1e3, "ms"),
               fmt_delta(r["delta_self_us"] / 1e3, "ms"),
               fmt_value(r["base_total_us"] / 1e3, "ms"),
               fmt_value(r["new_total_us"] / 1e3, "ms")]
        if cuda:
            row.append(fmt_delta(r["delta_self_device_us"] / 1e3, "ms"))
        rows.append([*row, fmt_ratio(r["ratio_self"])])
    headers = ["operator", "base calls", "new calls", "base self", "new self", "delta self",
               "base total", "new total", *(["delta device self"] if cuda else []),
               "self ratio"]
    note = (" Operator times are CPU times of the traced steps: under load (see 'Host "
            "load') they include time the operator waited for a CPU.") \
        if report.load_problem else ""
    return [Heading(2, "Top operators by change in self time"),
            Para(f"From the torch.profiler traces, {scope}; sorted by |delta| of self time."
                 + note),
            Table(headers, rows,
                  ["worse" if r["delta_self_us"] > 0 and r["ratio_self"] > 1.05 else ""
                   for r in ops.to_dict("records")])]


def _load(report: Report) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Host load"),
                           Para("Conditions each run was measured under (from run.json "
                                "host_load). Timing verdicts are only as good as these.")]
    if report.load_problem:
        blocks.append(Alert(report.load_problem))
    table = report.load
    classes = ["differs" if r["base"] != r["new"] and r["item"] == "measured under load"
               else "" for r in table.to_dict("records")]
    blocks.append(_frame_table(table, classes))
    return blocks
