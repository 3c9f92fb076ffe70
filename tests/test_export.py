"""LaTeX tables and the self-contained REPORT.html."""
import base64
import re

import pandas as pd

from idd_lib import export, report

PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY42YAAAAASUVORK5CYII=")


def test_tables_are_also_written_as_booktabs_latex(tmp_path):
    frame = pd.DataFrame({"method": ["idd+pid", "kd_2"], "mIoU": [51.234, float("nan")],
                          "best": ["**60.1 (+2.0)**", "50.0"]})
    report.write_table(frame, tmp_path / "t")
    latex = (tmp_path / "t.tex").read_text()
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    assert "kd\\_2" in latex and "51.23" in latex and "nan" not in latex.lower()
    assert "\\textbf{60.1 (+2.0)}" in latex and "**" not in latex


def test_report_html_is_one_file_with_rendered_tables_and_embedded_figures(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "miou.png").write_bytes(PNG_1PX)
    (tmp_path / "figures" / "miou.pdf").write_bytes(b"%PDF-1.4 tiny")
    (tmp_path / "REPORT.md").write_text("# IDD study: profile `quick`\n\n## Students\n\n| method | mIoU |\n|:--|--:|\n"
                                        "| idd | 50.00 |\n\n![mIoU per method](figures/miou.png)\n\n"
                                        "mIoU ([PDF](figures/miou.pdf))\n\n## Figures\n\n_missing figure: tsne_\n")
    page = export.markdown_to_html(tmp_path / "REPORT.md").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>IDD study: profile quick</title>" in page
    assert re.search(r"<td[^>]*>idd</td>\s*<td[^>]*>50.00</td>", page)
    (source,) = re.findall(r'<img src="([^"]+)"', page)
    assert source == "data:image/png;base64," + base64.b64encode(PNG_1PX).decode()
    assert "figures/" not in page.split("<body>")[1].split("<em>")[0]  # nothing left to fetch from disk
    pdf = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 tiny").decode()
    assert f'<a download="miou.pdf" href="{pdf}">PDF</a>' in page                 # works sent alone
    contents = page.split('<nav class="contents">')[1].split("</nav>")[0]          # after the title, before the rest
    assert page.index("</h1>") < page.index('<nav class="contents">') < page.index('<h2 id="section-1">Students</h2>')
    assert re.findall(r'href="#(section-\d)">([^<]+)<', contents) == [("section-1", "Students"), ("section-2", "Figures")]


def test_printed_tables_use_readers_names_the_papers_order_and_no_empty_statistics(tmp_path):
    from idd_lib import report

    frame = pd.DataFrame({"method": ["idd+pid", "baseline", "kd"], "seeds": [1, 1, 1], "mean": [66.0, 59.0, 64.0],
                          "std": [float("nan")] * 3, "ci95": [float("nan")] * 3, "mIoU": ["66.00", "59.00", "64.00"],
                          "delta_vs_baseline": [7.0, float("nan"), 5.0], "r2_mean": [0.9, 0.8, 0.85],
                          "pearson_best_other": ["kd", "idd+pid", "idd+pid"]})
    markdown = report.write_table(frame, tmp_path / "methods")
    header = markdown.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["method", "seeds", "mIoU", "Δ vs baseline",
                                                                 "R² mean", "pearson best other"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()[2:]]
    assert [row[0] for row in rows] == ["Baseline", "KD", "IDD+PID"] and "nan" not in markdown
    assert rows[0][3] == "" and [row[5] for row in rows] == ["IDD+PID", "IDD+PID", "KD"]
    assert "ci95" not in (tmp_path / "methods.tex").read_text() and "IDD+PID" in (tmp_path / "methods.tex").read_text()
    assert pd.read_csv(tmp_path / "methods.csv").columns.tolist() == frame.columns.tolist()   # the data keeps its names
