"""Write reports/claims/: claims.md, claims.csv and claims.html from the claims table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from profiler.render.document import Block, Heading, Para, Table
from profiler.render.format import fmt_value
from profiler.render.html import render_html
from profiler.render.markdown import render_markdown
from profiler.rundir import atomic_write_text

_UNIT_FORMAT = {"s": "s", "s/batch": "s", "bytes/step": "bytes", "bytes": "bytes", "ms": "ms",
                "steps/s": "steps/s"}


def fmt_measured(value: object, unit: str) -> str:
    """A measured value in the claim's unit (seconds keep 4 significant digits)."""
    if unit in ("s", "s/batch"):
        text = fmt_value(value, "")
        return text if text == "n/a" else f"{text} {unit}"
    if unit == "bytes/step":
        text = fmt_value(value, "bytes")
        return text if text == "n/a" else f"{text}/step"
    return fmt_value(value, _UNIT_FORMAT.get(unit, unit))


def claims_document(table: pd.DataFrame, context: str) -> list[Block]:
    rows, classes = [], []
    for r in table.to_dict("records"):
        factor = "n/a" if pd.isna(r["factor_measured"]) else f"{r['factor_measured']:.3g}x"
        claimed = "n/a" if pd.isna(r["factor_claimed"]) else f"{r['factor_claimed']:.3g}x"
        rows.append([str(r["claim"]), str(r["before"]), str(r["after"]),
                     fmt_measured(r["measured_before"], str(r["unit"])),
                     fmt_measured(r["measured_after"], str(r["unit"])), factor, claimed,
                     str(r["device"]), str(r["holds"]), str(r["note"])])
        classes.append({"no": "worse", "yes": "better"}.get(str(r["holds"]), ""))
    return [
        Heading(1, "The notes' optimization claims, measured"),
        Para(context),
        Table(["claim", "before (claimed)", "after (claimed)", "measured before",
               "measured after", "improvement", "claimed improvement", "device", "holds",
               "note"], rows, classes),
        Para("holds: yes = the claimed 'after' bound and the claimed improvement factor both "
             "hold here; partly = one of them; no = neither; approximate claims ('~') get 20% "
             "slack. Absolute numbers depend on the hardware and size; the factor much less."),
    ]


def write_claims(table: pd.DataFrame, out_dir: Path | str, context: str) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks = claims_document(table, context)
    paths = {"md": out / "claims.md", "csv": out / "claims.csv", "html": out / "claims.html"}
    atomic_write_text(paths["md"], render_markdown(blocks))
    atomic_write_text(paths["html"], render_html(blocks, {}))
    atomic_write_text(paths["csv"], table.to_csv(index=False))
    return paths
