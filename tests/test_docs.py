"""Documentation resolves inside the repository: every relative link and every ``*.md`` name cited in
README, docs/, the library's docstrings and the notebooks names a file (and heading) that exists,
and nothing names a path of the machine the project was written on."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# ``*.md`` names that are cited but are not documents of this repository, and why.
OUTSIDE = {
    "REPORT.md": "written by the study into results/<profile>/",
}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
MD_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b(#[\w-]+)?")
MACHINE_PATH = re.compile(r"(?<![\w.])(?:/work/|/home/|/Users/|/root/|[A-Z]:\\\\|\.\./shared)")


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text())
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return "\n".join(filter(None, (ast.get_docstring(n) for n in nodes)))


def _notebook_text(path: Path) -> str:
    return "\n".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"])


def cited_texts(root: Path = ROOT) -> dict[Path, str]:
    """Every text that may cite a document: markdown files, module/class/function docstrings, notebooks."""
    texts = {p: p.read_text() for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()}
    texts.update({p: _docstrings(p) for p in sorted((root / "idd_lib").rglob("*.py"))})
    texts.update({p: _notebook_text(p) for p in sorted((root / "notebooks").glob("*.ipynb"))})
    return texts


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces to '-'."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", re.sub(r"```.*?```", "", markdown, flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _resolve(target: str, citing: Path, root: Path) -> Path | None:
    """A cited document, read relative to the citing file, then to the repository root."""
    for base in (citing.parent, root):
        candidate = (base / target).resolve()
        if candidate.is_file() and candidate.is_relative_to(root):
            return candidate
    return None


def broken_references(root: Path = ROOT) -> list[str]:
    """``"<file>: <reference>"`` for each link or ``*.md`` name that does not resolve in ``root``."""
    problems = []
    for path, text in cited_texts(root).items():
        links = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)] if path.suffix == ".md" else []
        prose = LINK.sub("", text) if path.suffix == ".md" else text  # a link's text is not a citation
        names = [name + anchor for name, anchor in MD_NAME.findall(prose)]
        for target in dict.fromkeys(links + names):
            name, _, anchor = target.partition("#")
            if Path(name).name in OUTSIDE:
                continue
            found = _resolve(name, path, root) if name else path
            if found is None:
                problems.append(f"{path.relative_to(root)}: {target} does not exist")
            elif anchor and found.suffix == ".md" and anchor not in heading_anchors(found.read_text()):
                problems.append(f"{path.relative_to(root)}: {target} has no heading #{anchor}")
    return problems


def test_every_cited_document_resolves_inside_the_repository():
    assert broken_references() == []


def test_no_machine_paths_in_docs_docstrings_or_notebooks():
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p, text in cited_texts().items()
            for m in MACHINE_PATH.finditer(text)]
    assert hits == []


@pytest.mark.parametrize("cite", ["see docs/missing.md", "[x](docs/missing.md)", "[x](docs/method.md#no-such-heading)"])
def test_the_check_fails_on_a_missing_document_or_heading(tmp_path, cite):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "method.md").write_text("# Method\n\n## The IDD loss\n")
    (tmp_path / "idd_lib").mkdir()
    (tmp_path / "idd_lib" / "m.py").write_text('"""See docs/method.md#the-idd-loss."""\n')
    (tmp_path / "README.md").write_text(f"[method](docs/method.md) and {cite}\n")
    problems = broken_references(tmp_path)
    assert len(problems) == 1 and ("missing.md" in problems[0] or "no-such-heading" in problems[0])


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_readme_results_table_is_the_committed_confirmation():
    """Each row's default and tuned mIoU ± std and distance r recompute from
    reference/default/tuning/confirmation.csv on its fresh seeds (a number edited by hand fails)."""
    import pandas as pd

    confirmation = pd.read_csv(ROOT / "reference" / "default" / "tuning" / "confirmation.csv")
    fresh = confirmation[confirmation["fresh"]]
    section = (ROOT / "README.md").read_text().split("## Results on the default profile")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    assert {row[0].split("`")[1] for row in rows} == set(confirmation["method"]) - {"baseline"}

    def cell(method: str, setting: str, column: str = "miou") -> str:
        values = fresh[(fresh["method"] == method) & (fresh["setting"] == setting)][column]
        assert len(values) == 5, (method, setting)
        return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"

    for row in rows:
        method = row[0].split("`")[1]
        assert row[1] == cell(method, "default"), method
        assert row[4].split(" (")[0] == cell(method, "tuned"), method
        assert row[7].rstrip(" |") == cell(method, "default", "pearson"), method
    assert f"baseline {cell('baseline', 'default')})" in " ".join(section.split())
