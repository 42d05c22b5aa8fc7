"""Command line: ``python -m profiler {profile,report,claims} ...``.

The only place that parses arguments and calls sys.exit. Library code raises
``profiler.errors.ProfilerError`` subclasses; ``main`` prints one line and
returns the error's exit code.
"""

from __future__ import annotations

import argparse
import sys

from profiler.errors import ProfilerError


# --- profile (issue: make profile) -------------------------------------------------------
def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="run the model under instrumentation into runs/<name>/")
    p.set_defaults(handler=_run_profile)


def _run_profile(args: argparse.Namespace) -> int:
    raise ProfilerError("profile is not implemented yet")


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
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"percentage out of range: {text!r}")
    return value


def _run_report(args: argparse.Namespace) -> int:
    from profiler.analyze.report import ReportConfig, build_report, regressions
    from profiler.analyze.stats import StatsConfig
    from profiler.errors import RegressionError, UsageError
    from profiler.parse.run import load_run
    from profiler.render.files import default_report_dir, write_report

    try:
        stats = StatsConfig(resamples=args.resamples, noisy_floor=args.noise,
                            deterministic_floor=args.memory_noise)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    base, new = load_run(args.base, progress), load_run(args.new, progress)
    report = build_report(base, new, ReportConfig(stats=stats, top_operators=args.top,
                                                  force=args.force))
    for warning in report.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    out = args.out or default_report_dir(args.base, args.new)
    try:
        written = write_report(report, out, gate=args.fail_on_regression)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {out}: {exc}") from None
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
    p.set_defaults(handler=_run_claims)


def _run_claims(args: argparse.Namespace) -> int:
    raise ProfilerError("claims is not implemented yet")


# --- entry point -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m profiler", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_profile(sub)
    _add_report(sub)
    _add_claims(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
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
