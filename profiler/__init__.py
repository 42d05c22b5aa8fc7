"""Profile a PyTorch training loop into a run directory and compare two runs.

The names a user needs (``import profiler`` stays light: each loads on first use):

- ``profile(run_dir, mode="full", model=None, **options)`` — context manager around
  your own training loop (``prof.phase(name)``, ``prof.step(**fields)``); writes the
  same run directory as ``python -m profiler profile``.
- ``Workload`` — the protocol a ``--workload module:factory`` factory returns.
- ``load_run(path)`` — a run directory as DataFrames (``Run``).
- ``build_report(base, new, ReportConfig())`` / ``write_report(report, out_dir)`` — the
  before/after comparison behind ``make report``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = ["profile", "Profile", "Workload", "load_run", "build_report", "write_report", "ReportConfig"]

_WHERE = {
    "profile": "profiler.api",
    "Profile": "profiler.api",
    "Workload": "profiler.collect.workload",
    "load_run": "profiler.parse.run",
    "build_report": "profiler.analyze.report",
    "ReportConfig": "profiler.analyze.report",
    "write_report": "profiler.render.files",
}

if TYPE_CHECKING:
    from profiler.analyze.report import ReportConfig, build_report
    from profiler.api import Profile, profile
    from profiler.collect.workload import Workload
    from profiler.parse.run import load_run
    from profiler.render.files import write_report


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'profiler' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
