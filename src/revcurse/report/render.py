"""A report as a list of blocks, rendered to self-contained HTML (figures inlined as base64, no
external assets, opens offline) and to Markdown (figures linked by relative path)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revcurse.stats import COMPARISON_HEADER, comparison_cells

STYLE = """
body { font-family: system-ui, -apple-system, sans-serif; max-width: 980px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
code, pre { background: #f6f6f6; padding: 0.1em 0.3em; border-radius: 3px; }
pre { padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.ok { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 600; }
img { max-width: 100%; }
"""


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Pre:
    text: str


@dataclass
class Check:
    """A measured target: the label, the measured value as text and whether it was met."""

    label: str
    measured: str
    ok: bool


Block = Heading | Para | Table | Figure | Pre | Check


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def to_html(title: str, blocks: Sequence[Block]) -> str:
    esc = html.escape
    parts = [f"<h1>{esc(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{esc(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in b.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in row) + "</tr>" for row in b.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode()
            parts.append(
                f'<figure><img alt="{esc(b.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Pre):
            parts.append(f"<pre>{esc(b.text)}</pre>")
        elif isinstance(b, Check):
            cls, word = ("ok", "met") if b.ok else ("fail", "NOT met")
            parts.append(
                f"<p>{esc(b.label)}: measured {esc(b.measured)} — <span class='{cls}'>{word}</span></p>"
            )
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


MD_SPECIAL = re.compile(r"([\\`*_\[\]!#|])")


def md_text(text: str) -> str:
    """Text for Markdown, literally as given: report text can carry dataset strings (a facts
    file's name, prompts, entities), so HTML special characters become entities (viewers render
    raw HTML), Markdown's punctuation is backslash-escaped (no link, image, emphasis or heading
    can be injected) and line breaks become spaces (no new block can start)."""
    escaped = html.escape(MD_SPECIAL.sub(r"\\\1", str(text)), quote=False)
    return " ".join(escaped.splitlines())


def md_cell(value: Any) -> str:
    """A table cell: :func:`md_text` (pipes escaped, on one line)."""
    return md_text(fmt(value))


def to_markdown(title: str, blocks: Sequence[Block], root: Path) -> str:
    parts = [f"# {md_text(title)}"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + md_text(b.text))
        elif isinstance(b, Para):
            parts.append(md_text(b.text))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(md_cell(h) for h in b.header) + " |",
                     "|" + "---|" * len(b.header)]  # fmt: skip
            lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in b.rows]
            parts.append("\n".join(lines))
        elif isinstance(b, Figure):
            caption = md_text(b.caption).replace("]", "\\]")
            parts.append(f"![{caption}]({b.path.relative_to(root).as_posix()})\n\n*{caption}*")
        elif isinstance(b, Pre):
            fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", b.text)), default=0))
            parts.append(f"{fence}\n{b.text.rstrip()}\n{fence}")
        elif isinstance(b, Check):
            parts.append(f"- {md_text(b.label)}: measured {md_text(b.measured)} — "
                         f"**{'met' if b.ok else 'NOT met'}**")  # fmt: skip
    return "\n\n".join(parts) + "\n"


def comparison_section(
    tests: dict[str, dict[str, Any]],
    heading: str,
    columns: list[str],
    labels: Callable[[str], list[str]],
    note: str,
    effect: str = "MDM - ARM",
) -> list[Block]:
    """Paired tests (:func:`revcurse.stats.paired_comparison` results by key) as a heading, a
    table (``labels(key)`` under ``columns``, then ``effect``, interval, p, size, gap) and a note
    on how to read it; nothing when there are no tests (a test that was not run is listed so)."""
    if not tests:
        return []
    rows = [[*labels(key), *comparison_cells(t)] for key, t in tests.items()]
    header = [effect, *COMPARISON_HEADER[1:]]
    return [Heading(heading), Table([*columns, *header], rows), Para(note)]
