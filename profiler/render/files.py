"""Write a report directory: report.md, report.html, summary.csv and plots/*.png (atomic)."""

from __future__ import annotations

from pathlib import Path

from profiler.analyze.report import Report
from profiler.render.document import build_document
from profiler.render.html import render_html
from profiler.render.markdown import render_markdown
from profiler.render.plots import report_plots
from profiler.rundir import atomic_write_bytes, atomic_write_text

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
SUMMARY_CSV = "summary.csv"
PLOT_DIR = "plots"


def default_report_dir(base_path: Path | str, new_path: Path | str,
                       root: Path | str = "reports") -> Path:
    """``reports/<base>_vs_<new>`` from the run directories' names."""
    return Path(root) / f"{Path(base_path).resolve().name}_vs_{Path(new_path).resolve().name}"


def write_report(report: Report, out_dir: Path | str, gate: float | None = None) -> dict[str, Path]:
    """Render and write every file; returns name -> path."""
    out = Path(out_dir)
    (out / PLOT_DIR).mkdir(parents=True, exist_ok=True)
    plots = report_plots(report)
    blocks = build_document(report, set(plots), gate)
    written: dict[str, Path] = {}
    for name, png in plots.items():
        path = out / PLOT_DIR / f"{name}.png"
        atomic_write_bytes(path, png)
        written[f"plot:{name}"] = path
    atomic_write_text(out / REPORT_MD, render_markdown(blocks, PLOT_DIR))
    atomic_write_text(out / REPORT_HTML, render_html(blocks, plots))
    atomic_write_text(out / SUMMARY_CSV, report.summary.to_csv(index=False))
    written.update({"md": out / REPORT_MD, "html": out / REPORT_HTML, "csv": out / SUMMARY_CSV})
    return written
