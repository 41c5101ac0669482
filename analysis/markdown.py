"""Markdown and HTML rendering for the report: number formatting, pipe tables, the document
accumulator with numbered figures, and the self-contained HTML page (figures inlined)."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def fmt(value: Any, digits: int = 4) -> str:
    """Compact number formatting for tables; NaN/None → ``—``."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "—"
        if abs(value) >= 10_000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def ci_text(point: float, lo: float, hi: float) -> str:
    """``point [lo, hi]``."""
    if not np.isfinite(point):
        return "—"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return fmt(point)
    return f"{fmt(point)} [{fmt(lo)}, {fmt(hi)}]"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub/Markdown pipe table; cells are formatted with :func:`fmt` unless strings."""

    def cell(v: Any) -> str:
        text = v if isinstance(v, str) else fmt(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class Doc:
    """Accumulates report markdown and numbers the figures."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures = 0

    def add(self, text: str = "") -> None:
        self.parts.append(text)

    def figure(self, png: Path, root: Path, caption: str) -> None:
        self.figures += 1
        rel = png.relative_to(root).as_posix()
        self.add(f"![Figure {self.figures}]({rel})\n\n*Figure {self.figures}. {caption}*\n")

    def text(self) -> str:
        return "\n".join(self.parts).rstrip() + "\n"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;line-height:1.45;color:#222}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left}
th{background:#f3f3f3} img{max-width:100%} code{background:#f5f5f5;padding:0 0.2em}
pre{background:#f5f5f5;padding:0.6em;overflow-x:auto}
"""


def render_html(markdown_text: str, root: Path, title: str) -> str:
    """Render the report markdown to a self-contained HTML page (PNG figures inlined)."""
    import markdown

    def inline(match: re.Match[str]) -> str:
        path = root / match.group(2)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    embedded = re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", inline, markdown_text)
    body = markdown.markdown(embedded, extensions=["tables", "fenced_code", "md_in_html"])
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
        "</body>\n</html>\n"
    )
