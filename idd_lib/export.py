"""The report's tables and REPORT.md in the forms others read them in: LaTeX (booktabs) for papers,
and one self-contained HTML file (figures embedded) that opens from a file or an e-mail."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd
from markdown_it import MarkdownIt

_BOLD = re.compile(r"\*\*(.+?)\*\*")  # Markdown bold in table cells (report.highlight_changes)
_IMAGE = re.compile(r'<img src="([^":]+\.png)"')  # relative PNG sources, not data: or http: ones
_PDF_LINK = re.compile(r'<a href="([^":]+\.pdf)"')    # relative PDF links
_SECTION = re.compile(r"<h2>(.+?)</h2>")
_STYLE = """body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
  line-height: 1.45; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.85rem; }
th, td { border-top: 1px solid #bbb; border-bottom: 1px solid #bbb; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
code { background: #f2f2f2; padding: 0 0.2rem; }"""


def latex_table(frame: pd.DataFrame, index: bool = False) -> str:
    """A booktabs tabular (\\toprule/\\midrule/\\bottomrule; needs ``\\usepackage{booktabs}``),
    LaTeX's special characters escaped, Markdown bold as ``\\textbf``."""
    latex = frame.to_latex(index=index, float_format="%.2f", escape=True, na_rep="")
    return _BOLD.sub(r"\\textbf{\1}", latex)


def _embed_images(body: str, folder: Path) -> str:
    def data_uri(match: re.Match) -> str:
        path = folder / html.unescape(match.group(1))
        if not path.is_file():
            return match.group(0)
        return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"'

    return _IMAGE.sub(data_uri, body)


def _embed_pdfs(body: str, folder: Path) -> str:
    """Relative PDF links as downloads of the embedded file, so the page works sent alone."""
    def data_link(match: re.Match) -> str:
        path = folder / html.unescape(match.group(1))
        if not path.is_file():
            return match.group(0)
        return (f'<a download="{html.escape(path.name)}" '
                f'href="data:application/pdf;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"')

    return _PDF_LINK.sub(data_link, body)


def _with_contents(body: str) -> str:
    """Section headings with ids, and a table of contents of them after the page's title."""
    sections = []

    def anchored(match: re.Match) -> str:
        sections.append(match.group(1))
        return f'<h2 id="section-{len(sections)}">{match.group(1)}</h2>'

    body = _SECTION.sub(anchored, body)
    if not sections:
        return body
    items = "".join(f'<li><a href="#section-{i}">{title}</a></li>\n' for i, title in enumerate(sections, 1))
    contents = f'<nav class="contents"><strong>Contents</strong>\n<ol>\n{items}</ol>\n</nav>\n'
    title_end = body.find("</h1>")
    cut = title_end + len("</h1>\n") if title_end >= 0 else 0
    return body[:cut] + contents + body[cut:]


def html_body(markdown_path: str | Path) -> str:
    """A Markdown file as HTML, tables rendered, its PNG figures embedded (also what 06 displays:
    Jupyter cannot follow the report's relative figure links)."""
    markdown_path = Path(markdown_path)
    return _embed_images(MarkdownIt("commonmark").enable("table").render(markdown_path.read_text()),
                         markdown_path.parent)


def markdown_to_html(markdown_path: str | Path) -> Path:
    """Write ``<stem>.html`` beside a Markdown file: one page with a table of contents, figures
    embedded as data URIs and PDF links as downloads of the embedded files."""
    markdown_path = Path(markdown_path)
    text = markdown_path.read_text()
    title = next((line.lstrip("# ").replace("`", "") for line in text.splitlines() if line.startswith("# ")), markdown_path.stem)
    body = _with_contents(_embed_pdfs(html_body(markdown_path), markdown_path.parent))
    path = markdown_path.with_suffix(".html")
    path.write_text(f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                    f"<title>{html.escape(title)}</title>\n<style>\n{_STYLE}\n</style>\n</head>\n<body>\n{body}</body>\n</html>\n")
    return path
