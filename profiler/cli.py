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
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    raise ProfilerError("report is not implemented yet")


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
