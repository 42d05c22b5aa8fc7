"""Rendered reports: the same numbers in report.md, report.html and summary.csv, escaping,
self-containment, and the HTML in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from profiler.analyze.report import ReportConfig, build_report
from profiler.parse.run import load_run
from profiler.render.files import write_report
from profiler.render.format import fmt_value, summary_cells
from profiler.render.markdown import _cell

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium"
                                        if Path("/usr/bin/chromium").exists() else None)
EVIL = '<script>alert("x")</script>&<b>'


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, write_run):
    root = tmp_path_factory.mktemp("render")
    base = write_run(root / "base", steps=30, warmup=3, seed=1, nvml=True, pool=True)
    new = write_run(root / "new", name=EVIL, steps=30, warmup=3, seed=2, wall_ms=26.0,
                    carrier_scale=2.0, nvml=True, pool=True, status="interrupted")
    report = build_report(load_run(base), load_run(new), ReportConfig())
    files = write_report(report, root / "out", gate=0.05)
    return report, files


def test_same_numbers_in_markdown_html_and_csv(rendered):
    report, files = rendered
    md = files["md"].read_text()
    html = files["html"].read_text().replace('<td class="t">', "<td>")
    csv = pd.read_csv(files["csv"])
    assert len(csv) == len(report.summary)
    np.testing.assert_allclose(csv["ratio"], report.summary["ratio"], rtol=1e-12)
    for row in csv.to_dict("records"):
        cells = summary_cells(row)
        line = "| " + " | ".join(_cell(cells[k]) for k in (
            "metric", "base", "new", "delta", "ratio", "ci", "noise", "verdict", "kind", "rule",
            "gated"))
        assert line in md.replace("| **", "| ").replace("** |", " |"), line
        row_html = "".join(f"<td>{escape(cells[k])}</td>" for k in (
            "metric", "base", "new", "delta", "ratio", "ci", "noise", "verdict", "kind", "rule",
            "gated"))
        assert row_html in html, row_html
    step = csv[csv["metric"] == "step time"].iloc[0]
    assert step["verdict"] == "worse" and step["ratio"] == pytest.approx(1.3, rel=0.02)
    carrier = csv[csv["metric"] == "peak [region/carrier]"].iloc[0]
    assert (carrier["base"], carrier["new"], carrier["verdict"]) == (400_000, 800_000, "worse")
    assert fmt_value(carrier["new"], "bytes") == "781.25 KiB"
    # every other category (7 regions, 3 roles, 1 pool) is identical in both runs
    others = csv[csv["metric"].str.startswith("peak [") & (csv["metric"] != carrier["metric"])]
    pool = others["metric"].str.startswith("peak [pool/")
    assert len(others) == 11 and set(others.loc[~pool, "verdict"]) == {"equal"}
    assert set(others.loc[pool, "verdict"]) == {"within noise"}  # pool counters: not exact


def test_html_escapes_run_strings_and_is_self_contained(rendered):
    _, files = rendered
    html = files["html"].read_text()
    assert "<script" not in html and "<b>" not in html
    assert "<script" not in files["md"].read_text()
    assert escape(EVIL) in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert html.count('src="data:image/png;base64,') == 3


def test_warnings_are_visible(rendered):
    report, files = rendered
    assert f"run {EVIL} has status 'interrupted', not 'complete'" in report.warnings
    md = files["md"].read_text()
    assert "> **WARNING:** run &lt;script>alert(" in md
    assert "> **WARNING:** Regression gate (5.0%) failed: step time, step time (p90), " in md
    assert ('<div class="warning" role="alert">WARNING: run &lt;script&gt;'
            in files["html"].read_text())


def test_sections_present(rendered):
    _, files = rendered
    md = files["md"].read_text()
    for heading in ("## Verdict", "## Step time", "## Throughput", "## Memory (tensors; process RSS and heap for context)", "## Host load",
                    "## Peak memory per category", "## Allocations per category",
                    "## Pool statistics (measured steps)", "## NVML (device memory, power)",
                    "## Memory growth per step", "## Top operators by change in self time",
                    "## Run metadata"):
        assert heading in md, heading
    # operator times in ms; no device-time column on a CPU run
    assert ("| **aten::gru** | 5.0 | 5.0 | 4.500 ms | 9.000 ms | +4.500 ms | 6.000 ms "
            "| 12.0 ms | 2.000x |") in md
    assert re.search(r"^\| \*\*new\*\* \| &lt;script>.* \| interrupted \| 3 \| 27 "
                     r"\| warm-up steps out \| 0 \| 0 \|$", md,
                     re.MULTILINE)
    for name in ("memory_over_steps", "step_time", "category_peaks"):
        assert f"(plots/{name}.png)" in md
        assert (files["md"].parent / "plots" / f"{name}.png").stat().st_size > 1000


def _png_variance(data: bytes) -> float:
    pixels = imread(io.BytesIO(data), format="png")
    return float(pixels[..., :3].var())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_html_in_headless_chromium(rendered, tmp_path):
    _, files = rendered
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    url = files["html"].resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for bad in ("Failed to load resource", "Uncaught", "ERR_FILE_NOT_FOUND"):
        assert bad not in dom.stderr
    assert "Performance report: base vs" in dom.stdout
    images = re.findall(r'<img id="plot-([a-z_]+)"[^>]*src="data:image/png;base64,([^"]+)"',
                        dom.stdout)
    assert sorted(name for name, _ in images) == ["category_peaks", "memory_over_steps",
                                                  "step_time"]
    for name, data in images:
        assert _png_variance(base64.b64decode(data)) > 1e-3, f"plot {name} is blank"
    shot = tmp_path / "shot.png"
    run = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,4000",
                          url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.var() > 1e-3
    # The plots really render in the page: some rows hold the plots' coloured lines/bars
    # (neither white, black nor grey).
    colour = np.abs(pixels[..., 0] - pixels[..., 2]) > 0.25
    assert colour.sum() > 2000
