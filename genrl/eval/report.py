"""Evaluation reports as Markdown and self-contained HTML, built from sections of blocks.

A report is a title and a list of :class:`Section` s; a section is a title and a list of blocks.
A *block* is anything with ``markdown() -> str`` and ``html() -> str`` — that is the whole
extension point: a video benchmark adds a block that renders an MP4 with a GIF fallback, a
driving benchmark returns :class:`Image` blocks of bird's-eye trajectory plots, a VLM benchmark
returns per-category :class:`Table` s. The builder never needs to know about them.

Pictures are files next to the report (``assets/...``), referenced by relative paths, so the
folder can be moved, zipped or served as it is; :func:`write_report` refuses a report whose
pictures are missing instead of writing one with broken images.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Block(Protocol):
    def markdown(self) -> str: ...

    def html(self) -> str: ...


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@dataclass
class Text:
    """A paragraph of plain text (escaped in HTML; written as is in Markdown)."""

    text: str

    def markdown(self) -> str:
        return self.text

    def html(self) -> str:
        return f"<p>{html.escape(self.text)}</p>"


@dataclass
class Table:
    """A table of already formatted cells; ``caption`` is shown above it."""

    header: list[str]
    rows: list[list[str]]
    caption: str = ""

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.header):
                raise ValueError(f"table {self.caption!r}: row {i} has {len(row)} cells, expected {len(self.header)}")

    def markdown(self) -> str:
        lines = [f"*{self.caption}*", ""] if self.caption else []
        lines.append("| " + " | ".join(_md_cell(h) for h in self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in self.rows)
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Image:
    """A picture file, ``path`` relative to the report folder (e.g. ``assets/samples.png``)."""

    path: str
    alt: str
    caption: str = ""

    def markdown(self) -> str:
        text = f"![{self.alt}]({self.path})"
        return f"{text}\n\n*{self.caption}*" if self.caption else text

    def html(self) -> str:
        caption = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        return (f'<figure><img src="{html.escape(self.path, quote=True)}" alt="{html.escape(self.alt, quote=True)}">'
                f"{caption}</figure>")

    def files(self) -> list[str]:
        return [self.path]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"# {self.title}"]
        for section in self.sections:
            parts.append(f"## {section.title}")
            parts += [block.markdown() for block in section.blocks]
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for section in self.sections:
            body.append(f"<section><h2>{html.escape(section.title)}</h2>")
            body += [block.html() for block in section.blocks]
            body.append("</section>")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n"
        )


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;"
    "text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}td:first-child,th:first-child"
    "{text-align:left}caption{caption-side:top;text-align:left;font-style:italic;padding:4px 0}"
    "figure{margin:0.5em 0 1.5em}img{max-width:100%;image-rendering:pixelated}"
    "figcaption{font-style:italic;color:#555}"
)


def write_report(report: Report, out_dir: str | Path, *, name: str = "report") -> tuple[Path, Path]:
    """Write ``name.md`` and ``name.html`` into ``out_dir``; every file a block references (its
    ``files()``) must already exist there. Returns both paths."""
    out_dir = Path(out_dir)
    for section in report.sections:
        for block in section.blocks:
            for rel in getattr(block, "files", lambda: [])():
                if Path(rel).is_absolute() or not (out_dir / rel).is_file():
                    raise FileNotFoundError(
                        f"report section {section.title!r}: {rel!r} is not a file inside {out_dir} "
                        "(expected a relative path to a picture written before the report)")
    md, page = out_dir / f"{name}.md", out_dir / f"{name}.html"
    md.write_text(report.markdown())
    page.write_text(report.html())
    return md, page
