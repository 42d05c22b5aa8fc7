"""Render report blocks as Markdown (plots referenced as PNG files next to it)."""

from __future__ import annotations

from profiler.render.document import Alert, Block, Heading, Image, Para, Table


def _text(text: str) -> str:
    """Run strings may hold markup: escape it so that no Markdown viewer renders it
    (``<`` and ``&``; a ``>`` opens no tag and stays readable)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("\n", " ")


def _cell(text: str) -> str:
    return _text(text.replace("\\", "\\\\")).replace("|", "\\|")


def render_markdown(blocks: list[Block], plot_dir: str = "plots") -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + _text(block.text), ""]
        elif isinstance(block, Alert):
            out += [f"> **WARNING:** {_text(block.text)}", ""]
        elif isinstance(block, Para):
            out += [_text(block.text), ""]
        elif isinstance(block, Table):
            out.append("| " + " | ".join(_cell(h) for h in block.headers) + " |")
            out.append("|" + "---|" * len(block.headers))
            for i, row in enumerate(block.rows):
                mark = block.classes[i] if i < len(block.classes) else ""
                cells = [_cell(c) for c in row]
                if mark in ("worse", "differs") and cells:
                    cells[0] = f"**{cells[0]}**"
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        elif isinstance(block, Image):
            out += [f"![{_cell(block.caption)}]({plot_dir}/{block.name}.png)", ""]
    return "\n".join(out)
