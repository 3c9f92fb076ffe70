"""idd_lib.notebook in a real kernel: Run All twice and a changed parameter in one kernel, an unknown
papermill -p name still an error, project errors as one line (notebook and papermill CLI), other
errors with their traceback, and the project kernel."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from idd_lib import notebook as nb
from idd_lib import presets, runs

ROOT = Path(__file__).resolve().parents[1]


def _book(*sources: str, parameters: str = "seed: int = 0  # s") -> nbformat.NotebookNode:
    cells = [nbformat.v4.new_code_cell("from idd_lib import config, notebook as nb, presets"),
             nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("P = nb.parameters(globals())\nP"),
             *map(nbformat.v4.new_code_cell, sources)]
    return nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": nb.KERNEL_NAME, "display_name": nb.KERNEL_DISPLAY_NAME,
                                                                          "language": "python"}})


def _run_all(client, book) -> None:
    for index, cell in enumerate(book.cells):
        client.execute_cell(cell, index)


def _errors(cell) -> list:
    return [o for o in cell.outputs if o.output_type == "error"]


def test_run_all_twice_and_a_changed_parameter_in_one_kernel():
    book = _book("result = {'seed': seed}\nterms = [1]")
    client = NotebookClient(book, kernel_name=nb.KERNEL_NAME, timeout=120)
    with client.setup_kernel():
        _run_all(client, book)
        _run_all(client, book)  # names the first run created are not parameters
        book.cells[1].source = "seed: int = 5  # s"
        _run_all(client, book)
    assert book.cells[2].outputs[0]["data"]["text/plain"] == "{'seed': 5}"


def test_unknown_papermill_parameter_is_one_line_first_and_last(tmp_path):
    done = subprocess.run([sys.executable, "-m", "papermill", "notebooks/06_report.ipynb", str(tmp_path / "out.ipynb"),
                           "-p", "profil", "quick"], capture_output=True, text=True, cwd=ROOT)
    message = "ParameterError: unknown notebook parameter(s) ['profil']; this notebook accepts ['options', 'profile']"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and message in lines[-1]
    first_error = next(i for i, line in enumerate(lines) if "Error" in line)
    assert lines[first_error] == f"error: {message}" and first_error < lines.index("Traceback (most recent call last):")


def test_project_errors_are_one_line_and_other_errors_keep_their_traceback():
    book = _book("presets.get_profile('nope')", "int('x')")
    client = NotebookClient(book, kernel_name=nb.KERNEL_NAME, timeout=120, allow_errors=True)
    with client.setup_kernel():
        _run_all(client, book)
    (project,), (bug,) = _errors(book.cells[3]), _errors(book.cells[4])
    assert len(project["traceback"]) == 1 and "profile" in project["traceback"][0] and project["ename"] == "ValueError"
    assert len(bug["traceback"]) > 1 and bug["ename"] == "ValueError"


@pytest.mark.parametrize("papermill", [True, False])
def test_a_project_error_shows_once_in_a_frontend(papermill, monkeypatch):
    """The kernel's terminal copy of the line is for papermill's CLI; in a frontend (Lab) ipykernel
    forwards that stream into the notebook, where it would be a second copy beside the red line."""
    import io
    import types

    shown, terminal = [], io.StringIO()
    history = (["# Parameters\nprofile = 'x'\n"] if papermill else []) + ["nb.parameters(...)"]
    shell = types.SimpleNamespace(history_manager=types.SimpleNamespace(input_hist_raw=history),
                                  _showtraceback=lambda etype, value, lines: shown.append(lines))
    monkeypatch.setattr(sys, "__stderr__", terminal)
    try:
        presets.get_profile("nope")
    except ValueError as err:
        nb._show_one_line(shell, ValueError, err, err.__traceback__)
    assert len(shown) == 1 and "unknown profile 'nope'" in shown[0][0]
    assert ("error: ValueError: profile: unknown profile 'nope'" in terminal.getvalue()) == papermill


def test_missing_prerequisite_runs_are_named_together():
    with pytest.raises(FileNotFoundError, match=r"no finished run of \['baseline', 'kd'\] for seed 0 in .*runs; "
                                                r"run 03_ablation with profile='quick' first"):
        runs.load_students("quick", ["baseline", "kd"], 0)


def test_every_notebook_names_the_project_kernel_and_make_installs_it():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert nbformat.read(path, as_version=4).metadata.kernelspec.name == nb.KERNEL_NAME, path.name
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(nb.KERNEL_NAME)
    assert spec.display_name == nb.KERNEL_DISPLAY_NAME and Path(spec.argv[0]).resolve() == Path(sys.executable).resolve()


def test_show_table_hides_empty_statistics_and_splits_wide_tables_evenly(monkeypatch):
    import numpy as np
    import pandas as pd

    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    columns = {f"c{i}": [1.23456, 2.0] for i in range(8)}
    frame = pd.DataFrame({"method": ["kd", "baseline"], **columns, "delta_vs_baseline": [1.5, np.nan],
                          "c0 std": [np.nan, np.nan]})
    nb.show_table(frame, "method")
    assert [list(part.columns) for part in shown] == [[f"c{i}" for i in range(5)], [*(f"c{i}" for i in range(5, 8)),
                                                                                    "Δ vs baseline"]]
    assert list(shown[0].index) == ["Baseline", "KD"] and shown[0].loc["KD", "c0"] == 1.235   # the paper's order
    assert shown[1].loc["Baseline", "Δ vs baseline"] == ""          # blank, not NaN


def test_show_displays_the_saved_figure_once_and_returns_nothing(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    from IPython.display import Image

    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    fig, _ = plt.subplots()
    assert nb.show(fig, tmp_path / "f") is None
    (image,) = shown
    assert isinstance(image, Image) and image.data == (tmp_path / "f.png").read_bytes()
    assert (tmp_path / "f.pdf").is_file() and not plt.fignum_exists(fig.number)  # no second inline copy


@pytest.mark.parametrize("given, text", [(0, "0"), ([0, 1], "0,1"), ((2, 3), "2,3"), (["baseline", "idd"], "baseline,idd"),
                                         ("0,1", "0,1")])
def test_a_text_parameter_takes_papermills_number_or_list(given, text):
    namespace = {"__annotations__": {"seeds": str}, "seeds": given}
    assert nb.parameters(namespace) == {"seeds": text} and namespace["seeds"] == text  # the notebook's globals too


@pytest.mark.parametrize("given", [True, None, {"a": 1}, [0, None]])
def test_other_values_of_a_text_parameter_are_one_line_errors(given):
    with pytest.raises(nb.ParameterError, match="parameter seeds: expected str"):
        nb.parameters({"__annotations__": {"seeds": str}, "seeds": given})
