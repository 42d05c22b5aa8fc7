"""Command line: ``python -m profiler {profile,report,claims} ...``.

The only place that parses arguments and calls sys.exit. Library code raises
``profiler.errors.ProfilerError`` subclasses; ``main`` prints one line and
returns the error's exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from profiler.errors import InterruptedRun, ProfilerError, RunDirError, UsageError


# --- profile (issue: make profile) -------------------------------------------------------
def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile", help="run the model under instrumentation into runs/<name>/",
        description="Train a workload (the built-in energy_flow model, or yours with "
                    "--workload) for a few steps under instrumentation and write a run "
                    "directory (run.jsonc, steps.csv, memory_by_category.csv, "
                    "allocations.csv, operators.csv, nvml.csv, traces, TensorBoard scalars).")
    p.error = _profile_usage_error  # one line on bad options, nothing written
    p.add_argument("--workload", default="energy_flow", metavar="SPEC",
                   help="what to train: energy_flow (default) | package.module:factory | "
                        "path/to/file.py:factory, where factory(device) returns a Workload "
                        "(README: 'Profile your own model')")
    p.add_argument("--module-depth", type=int, default=None, metavar="N",
                   help="full mode, workloads with a module: attribute memory to modules down "
                        "to N levels of qualified name (default: the deepest level with at "
                        "most 30 modules)")
    p.add_argument("--preset", default="debug",
                   help="model preset: debug | experiment | optimized (default: debug)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps (default: {DEFAULT_STEPS})")
    p.add_argument("--name", default=None,
                   help="run name, the directory under --out (default: <preset>-<variant>-"
                        "<mode>-<UTC time>)")
    p.add_argument("--variant", default="after",
                   help="model variant: before (historical slow paths) | after (default)")
    p.add_argument("--pool", default="off",
                   help="scratch-memory pool: off | simple | managed (default: off)")
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda[:N] (auto: cuda when available, default)")
    p.add_argument("--mode", default="full",
                   help="bare (no instrumentation) | light (allocator stats, NVML, scalars) | "
                        "full (light + torch.profiler trace window; default)")
    p.add_argument("--out", default="runs",
                   help="parent directory of run directories (default: runs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory of the same name (the old run "
                        "stays until the new one has recorded its first steps)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="FIELD=VALUE", help="override one config field (repeatable)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warm-up steps excluded from statistics (default: 3, at most steps - 1)")
    p.add_argument("--monitor-interval", type=int, default=10, metavar="STEPS",
                   help="every STEPS steps: new steps.csv rows appended and fsynced, a "
                        "run.jsonc heartbeat, and a progress line when stderr is not a terminal "
                        "(default: 10); a killed run loses at most the steps since the last "
                        "one; TensorBoard scalars are written at the end")
    p.add_argument("--nvml-interval", type=float, default=1.0, metavar="S",
                   help="NVML sample period in seconds, >= 0.5 (default: 1.0)")
    p.add_argument("--nvml-process-interval", type=float, default=5.0, metavar="S",
                   help="period of the per-process GPU memory query, seconds (default: 5.0)")
    p.add_argument("--trace-wait", type=int, default=2,
                   help="full mode: steps before the profiler warms up (default: 2)")
    p.add_argument("--trace-warmup", type=int, default=1,
                   help="full mode: profiler warm-up steps, discarded (default: 1)")
    p.add_argument("--trace-active", type=int, default=3,
                   help="full mode: recorded steps per trace window (default: 3)")
    p.add_argument("--trace-repeat", type=int, default=1,
                   help="full mode: number of trace windows (default: 1)")
    p.add_argument("--collective-timeout", type=float, default=None, metavar="S",
                   help="under torchrun: seconds a torch.distributed collective may wait for "
                        "its peers before it fails (default: $PROFILER_COLLECTIVE_TIMEOUT, "
                        "else 300)")
    p.add_argument("--measure-overhead", action="store_true",
                   help="light mode: alternate bare and instrumented steps and report the "
                        "paired-median overhead in run.jsonc (timings.overhead)")
    p.set_defaults(handler=_run_profile)


DEFAULT_STEPS = 20


def _profile_usage_error(message: str) -> None:
    print(f"error: {_prog()} profile: {message}", file=sys.stderr)
    sys.exit(UsageError.exit_code)


def _profile_options(args: argparse.Namespace, rank: Any = None):
    """Validate everything and build (options, config, device); touches no file.
    ``rank``: this process's ``RankInfo`` under torchrun (its device, its directory)."""
    import os
    from datetime import datetime, timezone
    from pathlib import Path

    from energy_flow.config import (
        PRESET_NAMES,
        VARIANTS,
        ConfigError,
        apply_variant,
        make_config,
        parse_override,
    )
    from energy_flow.runtime import resolve_device
    from profiler.collect.nvml import NvmlConfig
    from profiler.collect.session import MODES, ProfileOptions
    from profiler.collect.tracing import TraceSchedule

    custom = args.workload != "energy_flow"
    if custom:
        given = [flag for flag, value, default in (
            ("--preset", args.preset, "debug"), ("--variant", args.variant, "after"),
            ("--pool", args.pool, "off"), ("--set", args.overrides, [])) if value != default]
        if given:
            raise UsageError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to "
                             f"the energy_flow workload only, not --workload {args.workload}")
    if args.module_depth is not None and args.module_depth < 0:
        raise UsageError(f"--module-depth must be >= 0, got {args.module_depth}")
    if args.preset not in PRESET_NAMES:
        raise UsageError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESET_NAMES)}")
    if args.variant not in VARIANTS:
        raise UsageError(f"unknown variant {args.variant!r}; choose from {', '.join(VARIANTS)}")
    if args.mode not in MODES:
        raise UsageError(f"unknown mode {args.mode!r}; choose from {', '.join(MODES)}")
    if args.pool not in ("off", "simple", "managed"):
        raise UsageError(f"unknown pool {args.pool!r}; choose from off, simple, managed")
    steps = DEFAULT_STEPS if args.steps is None else args.steps
    if steps <= 0:
        raise UsageError(f"--steps must be > 0, got {steps}")
    warmup = min(3, steps - 1) if args.warmup is None else args.warmup
    if warmup < 0 or warmup >= steps:
        raise UsageError(f"--warmup must be in [0, steps) = [0, {steps}), got {warmup}")
    if args.monitor_interval <= 0:
        raise UsageError(f"--monitor-interval must be > 0 steps, got {args.monitor_interval}")
    if args.measure_overhead and args.mode != "light":
        raise UsageError("--measure-overhead needs --mode light")
    try:
        overrides = dict(parse_override(text) for text in args.overrides)
        config: Any = apply_variant(make_config(args.preset, **overrides), args.variant)
        nvml = NvmlConfig(interval_s=args.nvml_interval,
                          process_interval_s=args.nvml_process_interval)
        trace = TraceSchedule(args.trace_wait, args.trace_warmup, args.trace_active,
                              args.trace_repeat)
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.mode == "full" and steps <= trace.wait + trace.warmup:
        raise UsageError(f"--steps {steps} ends before the trace window "
                         f"(wait {trace.wait} + warmup {trace.warmup}); raise --steps")
    try:
        device = resolve_device(args.device)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    distributed = rank is not None and rank.distributed
    if distributed and device.type == "cuda" and args.device in ("auto", "cuda"):
        import torch

        device = torch.device("cuda", rank.local_rank)  # one GPU per local rank
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    label = _workload_label(args.workload) if custom else f"{args.preset}-{args.variant}"
    name = args.name or f"{label}-{args.mode}-{stamp}"
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"--name {name!r} must be a plain directory name")
    out = Path(args.out)
    run_dir = out / name
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {out} is not writable")
    if run_dir.exists() and not args.overwrite and not distributed:
        raise RunDirError(f"run directory {run_dir} already exists (use --overwrite)")
    if custom:
        from profiler.collect.workload import WorkloadLoadError, custom_workload

        try:
            make_workload = custom_workload(args.workload)
        except WorkloadLoadError as exc:
            raise UsageError(str(exc)) from None
        config = None
    else:
        from profiler.collect.workload import make_energy_flow_workload as make_workload
    options = ProfileOptions(
        run_dir=run_dir, name=name, preset=None if custom else args.preset,
        variant=None if custom else args.variant, pool=args.pool,
        mode=args.mode, steps=steps, warmup=warmup,
        monitor_interval=args.monitor_interval, overrides=overrides, nvml=nvml, trace=trace,
        overwrite=args.overwrite, measure_overhead=args.measure_overhead,
        command=tuple(sys.argv), workload=args.workload, module_depth=args.module_depth,
        rank=rank)
    return options, config, device, make_workload


def _join_ranks(args: argparse.Namespace, options: Any, device: Any) -> Any:
    """Under torchrun with more than one rank: the process group joined, the run name
    agreed (rank 0's), this rank's directory checked; the options of this rank."""
    from dataclasses import replace
    from pathlib import Path

    from profiler.collect.distributed import DistributedError, broadcast, init_process_group
    from profiler.rundir import rank_dir

    try:
        info = init_process_group(options.rank, device)
    except DistributedError as exc:
        raise UsageError(str(exc)) from None
    name = broadcast(options.name)
    root = Path(args.out) / name
    mine = rank_dir(root, info.rank)
    if mine.exists() and not args.overwrite:
        raise RunDirError(f"run directory {mine} already exists (use --overwrite)")
    return replace(options, name=name, run_dir=mine, trace_dir=root, rank=info)


def _workload_label(spec: str) -> str:
    """A run-name stem from a --workload spec: "examples/cnn.py:make" -> "cnn"."""
    from pathlib import Path

    target = spec.rpartition(":")[0]
    stem = Path(target).stem if target.endswith(".py") else target.rsplit(".", 1)[-1]
    return stem or "workload"


def _profile_summary(meta: dict) -> str:
    t = meta.get("timings") or {}
    lines = [f"run: {meta['status']}  {meta['steps_completed']}/{meta['steps_requested']} steps"
             f"  device {meta['device']['type']}  mode {meta['config']['mode']}"]
    if t.get("step_ms_median") is not None:
        tp = t.get("samples_per_s")
        lines.append(f"step time: median {t['step_ms_median']:.1f} ms, "
                     + ("" if tp is None else f"{tp:.1f} samples/s, ")
                     + f"over {t.get('measured_steps')} measured steps "
                     f"({t.get('measured_rule', 'warm-up and traced steps out')})")
    if t.get("traced_step_ms_median") is not None:
        lines.append(f"traced steps: median {t['traced_step_ms_median']:.1f} ms")
    if t.get("overhead"):
        o = t["overhead"]
        if o.get("pairs"):
            lines.append(f"light vs bare: {o['overhead_pct_paired_median']:+.2f}% "
                         f"(median of {o['pairs']} step pairs)")
    g = meta.get("memory_growth") or {}
    if g.get("verdict"):
        per = g.get("growth_bytes_per_step")
        per_text = "" if per is None else f", {per / 1024:+.1f} KiB/step"
        if g["verdict"] == "insufficient data" and g.get("steps_needed"):
            measured = meta["steps_completed"] - (meta.get("warmup_steps") or 0)
            per_text += (f" (a verdict needs {g['steps_needed']} measured steps, this run has "
                         f"{max(measured, 0)}: run with --steps "
                         f"{g['steps_needed'] + (meta.get('warmup_steps') or 0)} or more)")
        lines.append(f"memory ({g['metric']}): {g['verdict']}{per_text}")
    a = meta.get("attribution")
    if a:
        lines.append(f"attribution: {a['events']} allocator events in the trace window; "
                     f"sum over categories {a['sum_categories_bytes']} B vs allocator change "
                     f"{a['allocator_total_bytes']} B: {'ok' if a['ok'] else 'MISMATCH'} "
                     f"(tolerance {a['tolerance_bytes']} B)")
    d = meta.get("distributed") or {}
    if d.get("ranks"):
        per = ", ".join(f"{r['rank']} {r['status'] or 'no record'}" for r in d["ranks"])
        lines.append(f"ranks: {d['world_size']} ({d['backend']}, {d['launcher']}): {per}")
    elif d and d.get("world_size", 1) > 1:
        lines.append(f"rank {d['rank']} of {d['world_size']} ({d['backend']}): this rank's "
                     f"files in {'the run directory' if d['rank'] == 0 else 'ranks/'}")
    load = meta.get("host_load") or {}
    if load.get("under_load"):
        lines.append("WARNING: measured under load: " + "; ".join(load["under_load_reasons"]))
    nv = meta.get("nvml") or {}
    lines.append("nvml: sampled" if nv.get("available") else f"nvml: {nv.get('reason')}")
    t_rec = t.get("record_s")
    if t_rec is not None and t.get("total_s"):
        lines.append(f"record: {t['heartbeats']} heartbeats (steps.csv rows + run.jsonc) took "
                     f"{t_rec:.3f} s, {100 * t_rec / t['total_s']:.2f}% of the run")
    if meta.get("error"):
        lines.append(f"error: {meta['error']['type']}: {meta['error']['message']}")
    if meta.get("record_error"):
        hb = meta.get("heartbeat") or {}
        lines.append(f"run.jsonc could not be updated ({meta['record_error']}); it keeps its "
                     f"last heartbeat ({hb.get('steps_completed', 0)} steps, status running)")
    return "\n".join(lines)


def _run_profile(args: argparse.Namespace) -> int:
    from profiler.collect.distributed import DistributedError, rank_from_env
    from profiler.profiling import run_profile

    try:
        rank = rank_from_env(args.collective_timeout)
    except DistributedError as exc:
        raise UsageError(str(exc)) from None
    if args.collective_timeout is not None and args.collective_timeout <= 0:
        raise UsageError(f"--collective-timeout must be > 0 seconds, got "
                         f"{args.collective_timeout}")
    options, config, device, make_workload = _profile_options(args, rank)
    if rank is not None and rank.distributed:
        options = _join_ranks(args, options, device)
    what = options.workload if options.preset is None else f"{options.preset}/{options.variant}"
    print(f"profiling {what} on {device} ({options.mode}, "
          f"{options.steps} steps) -> {options.run_dir}", file=sys.stderr, flush=True)
    meta = run_profile(options, config, device, make_workload)
    if meta.get("kept_previous_run"):
        error = meta.get("error") or {}
        raise RunDirError(f"the new run {meta['status']} before recording a step "
                          f"({error.get('type')}: {error.get('message')}); {options.run_dir} "
                          f"keeps the previous run")
    print(options.trace_dir or options.run_dir)
    print(_profile_summary(meta))
    codes = {"complete": 0, "interrupted": InterruptedRun.exit_code, "failed": 1, "oom": 1}
    if meta.get("record_error"):
        return 1
    return codes.get(meta["status"], 1)


# --- report (issue: make report) ---------------------------------------------------------
def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="compare two run directories")
    p.add_argument("base", help="run directory of the baseline (e.g. runs/before)")
    p.add_argument("new", help="run directory to compare against it (e.g. runs/after)")
    p.add_argument("--out", help="report directory (default reports/<base>_vs_<new>)")
    p.add_argument("--fail-on-regression", metavar="P", type=_percent,
                   help="exit 1 when a gated metric (step time, peak memory, per-category "
                        "peak) is worse beyond noise by more than P (e.g. 5%%)")
    p.add_argument("--force", action="store_true",
                   help="compare runs that differ in preset, device or lattice")
    p.add_argument("--noise", metavar="P", type=_percent, default=0.05,
                   help="noise-threshold floor of timing metrics (default 5%%)")
    p.add_argument("--memory-noise", metavar="P", type=_percent, default=0.02,
                   help="noise threshold of allocator memory metrics (default 2%%)")
    p.add_argument("--min-bytes", type=int, default=64 * 1024,
                   help="memory differences below this many bytes are noise (default 65536)")
    p.add_argument("--min-ms", type=float, default=0.5,
                   help="time differences below this many ms are noise (default 0.5)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--top", type=int, default=15, help="operators listed (default 15)")
    p.set_defaults(handler=_run_report)


def _percent(text: str) -> float:
    """'5%' or '5' -> 0.05."""
    try:
        value = float(text.strip().rstrip("%")) / 100.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 5%, got {text!r}") \
            from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"percentage must be >= 0 and finite, got {text!r}")
    return value


def _run_report(args: argparse.Namespace) -> int:
    import time

    from profiler.analyze.report import ReportConfig, build_report, regressions
    from profiler.analyze.stats import StatsConfig
    from profiler.errors import RegressionError, UsageError
    from profiler.parse.run import load_run
    from profiler.render.files import default_report_dir, write_report

    try:
        stats = StatsConfig(resamples=args.resamples, noisy_floor=args.noise,
                            deterministic_floor=args.memory_noise, min_bytes=args.min_bytes,
                            min_ms=args.min_ms)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.top < 0 or args.resamples < 1 or args.min_bytes < 0 or not 0 <= args.min_ms < 1e12:
        raise UsageError("--top and --min-bytes must be >= 0, --resamples >= 1 and --min-ms a "
                         f"finite number >= 0; got {args.top}, {args.min_bytes}, "
                         f"{args.resamples}, {args.min_ms}")
    base, new = load_run(args.base, progress), load_run(args.new, progress)
    t0 = time.perf_counter()
    progress(f"comparing {base.name} ({len(base.steps)} steps) with {new.name} "
             f"({len(new.steps)} steps), {args.resamples} bootstrap resamples ...")
    report = build_report(base, new, ReportConfig(stats=stats, top_operators=args.top,
                                                  force=args.force))
    progress(f"compared in {time.perf_counter() - t0:.1f} s")
    for warning in report.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    out = args.out or default_report_dir(args.base, args.new)
    t0 = time.perf_counter()
    progress(f"rendering plots and writing the report to {out} ...")
    written = write_report(report, out, gate=args.fail_on_regression)
    progress(f"report written in {time.perf_counter() - t0:.1f} s")
    counts = report.summary["verdict"].value_counts()
    print(f"report: {written['md']}  {written['html']}  {written['csv']}")
    print(", ".join(f"{int(n)} {v}" for v, n in counts.items()))
    for row in report.summary[report.summary["verdict"].isin(["worse", "better"])].itertuples():
        print(f"  {row.verdict:7s} {row.metric}: {row.ratio:.3f}x "
              f"(noise {row.noise_pct:.1f}%)")
    if args.fail_on_regression is not None:
        bad = regressions(report.summary, args.fail_on_regression)
        if not bad.empty:
            names = ", ".join(f"{r.metric} ({r.ratio:.3f}x)" for r in bad.itertuples())
            raise RegressionError(f"regression beyond {args.fail_on_regression:.1%}: {names}")
    return 0


# --- claims (issue: make report) ---------------------------------------------------------
def _add_claims(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("claims", help="measure the user's before/after optimization claims")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--preset", default="debug", help="model preset (default debug)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config override for the training, pool and cleanup measurements "
                        "(default on CPU: a 10x10 lattice, batch 4, hidden 64)")
    p.add_argument("--flows", type=int, default=100_000, help="flows for the init claim")
    p.add_argument("--repeats", type=int, default=5, help="repeats of the fast variants")
    p.add_argument("--steps", type=int, default=4, help="measured training steps per round")
    p.add_argument("--cleanup-steps", type=int, default=16, help="steps of the cleanup runs")
    p.add_argument("--pool-steps", type=int, default=12,
                   help="measured steps per pool kind (interleaved)")
    p.add_argument("--lattice", action="store_true",
                   help="also find the largest lattice within a memory budget, pool off vs on "
                        "(default on CUDA only; slow on CPU)")
    p.add_argument("--lattice-budget-mib", type=int, default=256,
                   help="memory budget of the lattice search (default 256)")
    p.add_argument("--lattice-max", type=int, default=64,
                   help="largest lattice width tried (default 64)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 gives stable CPU "
                        "timings on a machine shared with other work")
    p.add_argument("--out", default="reports/claims", help="output directory")
    p.set_defaults(handler=_run_claims)


def _run_claims(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from energy_flow.config import ConfigError, parse_override
    from energy_flow.runtime import resolve_device
    from profiler.claims.measure import CPU_OVERRIDES, ClaimsConfig, measure_claims
    from profiler.errors import UsageError
    from profiler.render.claims import write_claims
    from profiler.rundir import atomic_write_text

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        device = str(resolve_device(args.device))
        overrides = dict(parse_override(text) for text in args.set)
        if not overrides and device == "cpu":
            overrides = dict(CPU_OVERRIDES)
        cfg = ClaimsConfig(device=device, preset=args.preset, overrides=overrides,
                           flows=args.flows, repeats=args.repeats, train_steps=args.steps,
                           cleanup_steps=args.cleanup_steps, pool_steps=args.pool_steps,
                           lattice=args.lattice or device.startswith("cuda"),
                           lattice_budget_mib=args.lattice_budget_mib,
                           lattice_max=args.lattice_max, out=Path(args.out))
        cfg.model_config()
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    table, raw = measure_claims(cfg, progress)
    size = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"
    context = (f"Measured on {table['device'].iloc[0]} with torch {torch.__version__}; preset "
               f"{cfg.preset} (overrides for training, pool and cleanup: {size}); rounding on "
               f"one batch of the plain preset; flow initialization at {cfg.flows:,} flows. "
               f"Command: python -m profiler claims {' '.join(sys.argv[2:])}".rstrip())
    try:
        paths = write_claims(table, cfg.out, context)
        atomic_write_text(cfg.out / "claims.json", json.dumps(raw, indent=2, default=str) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write to {cfg.out}: {exc}") from None
    for row in table.itertuples():
        print(f"{row.holds:>12}  {row.claim}")
    print(f"claims: {paths['md']}  {paths['csv']}  {paths['html']}")
    return 0


# --- merge (multi-node runs without a shared file system) --------------------------------
def _add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge", help="combine the per-node directories of a multi-node run into one",
        description="Each node of a torchrun --nnodes N launch writes its ranks under its own "
                    "--out; merge copies them into one run directory (rank 0's node holds "
                    "run.jsonc) and records every rank's status.")
    p.add_argument("sources", nargs="+", help="the run directory of each node (<out>/<name>)")
    p.add_argument("--out", required=True, help="the merged run directory (must not exist)")
    p.set_defaults(handler=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    from profiler.merge import merge_runs

    meta = merge_runs(args.sources, args.out)
    d = meta["distributed"]
    per = ", ".join(f"{r['rank']} {r['status'] or 'missing'}" for r in d["ranks"])
    print(f"merged {len(args.sources)} director{'y' if len(args.sources) == 1 else 'ies'} "
          f"-> {args.out}: {meta['status']}; ranks {per}")
    return 0


# --- view ----------------------------------------------------------------------------------
def _add_view(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="write one self-contained HTML page of a run (offline)",
                       description="Write <run>/view.html: memory timeline of the trace window "
                                   "stacked by category, step times, top operators, NVML. "
                                   "No network needed to open it.")
    p.add_argument("run", help="run directory (e.g. runs/<name>)")
    p.add_argument("--out", default=None, help="output file (default <run>/view.html)")
    p.set_defaults(handler=_run_view)


def _run_view(args: argparse.Namespace) -> int:
    from profiler.render.viewer import write_view

    try:
        path = write_view(args.run, args.out)
    except OSError as exc:
        raise UsageError(f"cannot write the view: {exc}") from None
    print(path)
    return 0


# --- entry point -------------------------------------------------------------------------
def _prog() -> str:
    """The name the user typed: ``efprof`` from the console script, else ``python -m profiler``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and name not in ("__main__.py", "-c", "-m", "cli.py") \
        else "python -m profiler"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(), description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_profile(sub)
    _add_report(sub)
    _add_claims(sub)
    _add_merge(sub)
    _add_view(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from profiler.console import quiet_on_broken_pipe

    # A closed stdout / stderr (``| head``, a lost terminal) never ends a run or a report.
    with quiet_on_broken_pipe():
        args = build_parser().parse_args(argv)
        try:
            return int(args.handler(args) or 0)
        except ProfilerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
