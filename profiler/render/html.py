"""Render report blocks as one self-contained HTML page (plots embedded as PNG data URIs).

Every string comes from the runs and is escaped; the page loads nothing from
the network.
"""

from __future__ import annotations

import base64
from html import escape

from profiler.render.document import Alert, Block, Heading, Image, Para, Table

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child, td.t { text-align: left; }
tr.worse td { background: #fde0dc; }
tr.better td { background: #e0f3e0; }
tr.differs td { background: #fff3c4; }
.warning { border: 2px solid #c62828; background: #fdecea; padding: 0.6em 1em;
           margin: 0.6em 0; font-weight: bold; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
"""


def render_html(blocks: list[Block], plots: dict[str, bytes]) -> str:
    title = next((b.text for b in blocks if isinstance(b, Heading)), "report")
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            body.append(f"<h{level}>{escape(block.text)}</h{level}>")
        elif isinstance(block, Alert):
            body.append(f'<div class="warning" role="alert">WARNING: {escape(block.text)}</div>')
        elif isinstance(block, Para):
            body.append(f"<p>{escape(block.text)}</p>")
        elif isinstance(block, Table):
            body.append(_table(block))
        elif isinstance(block, Image) and block.name in plots:
            data = base64.b64encode(plots[block.name]).decode("ascii")
            body.append(f'<figure><img id="plot-{escape(block.name)}" alt="{escape(block.caption)}"'
                        f' src="data:image/png;base64,{data}"><figcaption>'
                        f"{escape(block.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _cell(text: str) -> str:
    """Numbers right-aligned (the default), words left-aligned."""
    numeric = not text or text[0] in "+-[0123456789" or text == "n/a"
    return f"<td>{escape(text)}</td>" if numeric else f'<td class="t">{escape(text)}</td>'


def _table(block: Table) -> str:
    lines = ["<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in block.headers)
             + "</tr>"]
    for i, row in enumerate(block.rows):
        mark = block.classes[i] if i < len(block.classes) else ""
        attr = f' class="{escape(mark)}"' if mark else ""
        lines.append(f"<tr{attr}>" + "".join(_cell(c) for c in row) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)
