"""Write a report directory: report.md, report.html, summary.csv and plots/*.png.

The whole directory is built in a temporary folder beside the target and renamed into
place as one unit: the target is the old report whole or the new one whole, never a mix
(a full disk or a signal leaves the old one as it was, and no temporary folder).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from profiler.analyze.report import Report
from profiler.errors import DiskFullError, UsageError
from profiler.render.document import build_document
from profiler.render.html import render_html
from profiler.render.markdown import render_markdown
from profiler.render.plots import report_plots
from profiler.rundir import atomic_write_bytes, atomic_write_text, replace_directory, staging_dir

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
SUMMARY_CSV = "summary.csv"
PLOT_DIR = "plots"


def default_report_dir(base_path: Path | str, new_path: Path | str,
                       root: Path | str = "reports") -> Path:
    """``reports/<base>_vs_<new>`` from the run directories' names."""
    return Path(root) / f"{Path(base_path).resolve().name}_vs_{Path(new_path).resolve().name}"


def write_report(report: Report, out_dir: Path | str, gate: float | None = None) -> dict[str, Path]:
    """Render and write every file; returns name -> final path. Raises ``DiskFullError``
    or ``UsageError`` (naming the directory) when it cannot be written; ``out_dir`` is
    then left as it was."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"cannot write the report to {out}: it exists and is not a directory")
    plots = report_plots(report)
    blocks = build_document(report, set(plots), gate)
    texts = {REPORT_MD: render_markdown(blocks, PLOT_DIR), REPORT_HTML: render_html(blocks, plots),
             SUMMARY_CSV: report.summary.to_csv(index=False)}
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_staging(out)
        tmp = staging_dir(out, "tmp")
        (tmp / PLOT_DIR).mkdir()
        for name, png in plots.items():
            atomic_write_bytes(tmp / PLOT_DIR / f"{name}.png", png)
        for name, text in texts.items():
            atomic_write_text(tmp / name, text)
        replace_directory(tmp, out)
        tmp = None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(str(exc.filename or out.parent),
                                f"the report directory {out} is unchanged") from None
        raise UsageError(f"cannot write the report to {out}: {exc.strerror or exc}; "
                         f"it is unchanged") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    written: dict[str, Path] = {f"plot:{name}": out / PLOT_DIR / f"{name}.png" for name in plots}
    written.update({"md": out / REPORT_MD, "html": out / REPORT_HTML, "csv": out / SUMMARY_CSV})
    return written


def _remove_dead_staging(out: Path) -> None:
    """Temporary folders of earlier reports to ``out`` whose process was killed."""
    for leftover in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(leftover.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue
