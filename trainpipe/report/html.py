"""A report as a list of blocks, written out twice: report.md and a self-contained report.html.

Building both files from the same blocks keeps them in step without a Markdown
parser: the HTML is not converted from the Markdown, each block renders itself in
both languages. Images are PNG bytes: the Markdown links the files saved next to it,
the HTML embeds them as base64 data URIs so that it can be mailed or uploaded alone.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Inline markup kept to what the reports use: `code` and **bold**.
_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")

# Every rule is scoped to the report's own element, so that report.html shown inside another
# page (a notebook's cell: `trainpipe.report(DIR)`) styles the report and nothing around it.
SCOPE = "trainpipe-report"
CSS = """
.S { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328;
     max-width: 1100px; margin: 2em auto; padding: 0 1.5em; line-height: 1.5; }
.S h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
.S h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.8em; }
.S table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; display: block; overflow-x: auto; }
.S th, .S td { border: 1px solid #d0d7de; padding: 4px 10px; }
.S th { background: #f6f8fa; text-align: left; }
.S td.num { text-align: right; font-variant-numeric: tabular-nums; }
.S tr:nth-child(even) td { background: #fbfcfd; }
.S code { background: #f2f4f6; padding: 1px 4px; border-radius: 4px; font-size: 0.92em; }
.S pre { background: #f6f8fa; padding: 12px; overflow-x: auto; border-radius: 6px; font-size: 0.85em; }
.S pre code { background: none; padding: 0; }
.S figure { margin: 1em 0; }
.S figure img { max-width: 100%; border: 1px solid #eaeef2; }
.S figcaption { color: #57606a; font-size: 0.9em; }
.S .note { color: #57606a; }
""".replace(".S", "." + SCOPE)


@dataclass
class Image:
    name: str  # file name under the report's figure folder
    png: bytes
    caption: str = ""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Doc:
    """An ordered list of report blocks; `add_*` appends, `write` renders both files."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", list(items)))

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", Table([str(h) for h in headers], [[_cell(c) for c in r] for r in rows])))

    def image(self, name: str, png: bytes, caption: str = "") -> None:
        self.blocks.append(("image", Image(name, png, caption)))

    def code(self, text: str, lang: str = "") -> None:
        self.blocks.append(("code", (lang, text)))

    def images(self) -> list[Image]:
        return [b for kind, b in self.blocks if kind == "image"]

    # ------------------------------------------------------------------ output
    def markdown(self, figures: str) -> str:
        out = [f"# {self.title}", ""]
        for kind, b in self.blocks:
            if kind == "heading":
                level, text = b
                out += ["#" * level + " " + text, ""]
            elif kind in ("para", "note"):
                out += [f"*{b}*" if kind == "note" else b, ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in b] + [""]
            elif kind == "table":
                out += _md_table(b) + [""]
            elif kind == "image":
                out += [f"![{b.caption or b.name}]({figures}/{b.name})", ""]
                if b.caption:
                    out += [f"*{b.caption}*", ""]
            elif kind == "code":
                lang, text = b
                out += [f"```{lang}", text.rstrip("\n"), "```", ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for kind, b in self.blocks:
            if kind == "heading":
                level, text = b
                body.append(f"<h{level}>{_inline(text)}</h{level}>")
            elif kind == "para":
                body.append(f"<p>{_inline(b)}</p>")
            elif kind == "note":
                body.append(f'<p class="note"><em>{_inline(b)}</em></p>')
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b) + "</ul>")
            elif kind == "table":
                body.append(_html_table(b))
            elif kind == "image":
                data = base64.b64encode(b.png).decode("ascii")
                cap = f"<figcaption>{_inline(b.caption)}</figcaption>" if b.caption else ""
                body.append(f'<figure><img alt="{html.escape(b.caption or b.name)}" '
                            f'src="data:image/png;base64,{data}">{cap}</figure>')
            elif kind == "code":
                _, text = b
                body.append(f"<pre><code>{html.escape(text)}</code></pre>")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title></head>\n<body>\n"
            + fragment("\n".join(body))
            + "\n</body></html>\n"
        )

    def write(self, output: Path, *, figures: str = "report_files") -> Path:
        """Write `output/report.md` (+ its PNGs under `figures/`) and `output/report.html`."""
        output.mkdir(parents=True, exist_ok=True)
        if self.images():
            (output / figures).mkdir(exist_ok=True)
        for img in self.images():
            (output / figures / img.name).write_bytes(img.png)
        md = output / "report.md"
        md.write_text(self.markdown(figures))
        (output / "report.html").write_text(self.html(), encoding="utf-8")
        return md


def fragment(body: str) -> str:
    """The report as an element that can sit inside any page: its scoped styles, then its content."""
    return f'<style>{CSS}</style>\n<div class="{SCOPE}">\n{body}\n</div>'


def body_of(document: str) -> str:
    """What report.html shows, without the document around it (for a notebook's cell)."""
    return document.split("<body>", 1)[-1].rsplit("</body>", 1)[0].strip()


def _cell(v: Any) -> str:
    return "" if v is None else str(v)


def _inline(text: str) -> str:
    parts, pos = [], 0
    for m in _INLINE.finditer(text):
        parts.append(html.escape(text[pos:m.start()]))
        if m.group(1) is not None:
            parts.append(f"<code>{html.escape(m.group(1))}</code>")
        else:
            parts.append(f"<strong>{html.escape(m.group(2))}</strong>")
        pos = m.end()
    parts.append(html.escape(text[pos:]))
    return "".join(parts)


def _is_number(s: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,.]+(e[-+]?\d+)?\s*(%|s|ms|x|min|h)?|[-+]?[\d.]+ ?[±] ?[\d.]+%?", s.strip()))


def _md_table(t: Table) -> list[str]:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    numeric = [bool(t.rows) and all(_is_number(r[i]) or not r[i] for r in t.rows) for i in range(len(t.headers))]
    lines = ["| " + " | ".join(esc(h) for h in t.headers) + " |",
             "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in t.rows]
    return lines


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in t.headers)
    rows = []
    for r in t.rows:
        cells = "".join(f'<td class="num">{html.escape(c)}</td>' if _is_number(c) else f"<td>{_inline(c)}</td>"
                        for c in r)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
