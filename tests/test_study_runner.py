"""The study runner on small throwaway notebooks (not the study's own): skips notebooks complete
for the same parameters, re-runs failed or unfinished ones, and says which cell of which notebook
failed (issue 6)."""
import json
import os
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from idd_lib import study

PARAMETERS = """\
profile: str = "quick"  # study profile
fail: bool = False  # raise in the last cell
die: bool = False  # kill the kernel
log: str = ""  # file that gets one line per execution
table: str = ""  # a file the notebook writes, as a study notebook writes a table"""

CELLS = [
    "from idd_lib import notebook as nb",
    PARAMETERS,
    "P = nb.parameters(globals())",
    "if log:\n    with open(log, 'a') as f:\n        f.write('executed\\n')",
    "if die:\n    import os\n    os._exit(1)",
    "if fail:\n    raise ValueError('deliberate failure')",
    "if table:\n    open(table, 'w').write('the table')",
]


@pytest.fixture
def notebooks(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    book = new_notebook(cells=[new_code_cell(source) for source in CELLS])
    book.cells[1].metadata["tags"] = ["parameters"]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, folder / "throwaway.ipynb")
    monkeypatch.setattr(study, "notebook_dir", lambda: folder)
    return folder


def executions(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_complete_notebook_is_skipped_only_for_the_same_parameters(notebooks, tmp_path):
    log, output = tmp_path / "log.txt", tmp_path / "out" / "throwaway.ipynb"
    params = {"profile": "quick", "log": str(log)}
    assert study.execute("throwaway", output, params) is True
    assert study.is_complete(output, params) and executions(log) == 1
    assert study.execute("throwaway", output, params) is False and executions(log) == 1
    assert study.execute("throwaway", output, {**params, "profile": "default"}) is True and executions(log) == 2
    assert study.execute("throwaway", output, {**params, "profile": "default"}, force=True) is True
    assert executions(log) == 3


def test_failed_notebook_names_its_cell_and_is_run_again(notebooks, tmp_path):
    log, output = tmp_path / "log.txt", tmp_path / "out" / "throwaway.ipynb"
    failing = {"profile": "quick", "fail": True, "log": str(log)}
    with pytest.raises(study.StudyError, match=r"notebook throwaway failed in cell (\d+): ValueError: deliberate "
                                               r"failure \(executed copy: .*throwaway.failed.ipynb\)") as err:
        study.execute("throwaway", output, failing)
    failed = output.with_name("throwaway.failed.ipynb")
    assert failed.is_file() and not output.exists()
    # the cell number is the one the user sees in the executed copy, on the failing source
    cell = int(re.search(r"in cell (\d+)", str(err.value)).group(1))
    assert "raise ValueError" in next(c.source for c in nbformat.read(failed, 4).cells
                                          if c.get("execution_count") == cell)
    assert not study.is_complete(failed, failing)  # a failed notebook never counts as complete

    with pytest.raises(study.StudyError):  # failed again: not skipped
        study.execute("throwaway", output, failing)
    assert executions(log) == 2
    fixed = {**failing, "fail": False}
    assert study.execute("throwaway", output, fixed) is True and study.is_complete(output, fixed)
    assert not failed.exists()  # no stale failed copy next to the good one


def test_unfinished_or_torn_outputs_are_run_again(notebooks, tmp_path):
    log, output = tmp_path / "log.txt", tmp_path / "out" / "throwaway.ipynb"
    params = {"profile": "quick", "log": str(log)}
    study.execute("throwaway", output, params)
    book = json.loads(output.read_text())
    book["metadata"]["papermill"]["end_time"] = None  # as papermill leaves a notebook it is still running
    output.write_text(json.dumps(book))
    assert study.execute("throwaway", output, params) is True
    output.write_text(output.read_text()[:500])  # a half-written file
    assert study.execute("throwaway", output, params) is True
    assert executions(log) == 3 and study.is_complete(output, params)


def test_unknown_parameter_and_dead_kernel_are_named(notebooks, tmp_path):
    output = tmp_path / "out" / "throwaway.ipynb"
    with pytest.raises(study.StudyError, match=r"notebook throwaway failed in cell \d+: ParameterError: unknown "
                                               r"notebook parameter\(s\) \['profil'\]"):
        study.execute("throwaway", output, {"profil": "quick"})
    with pytest.raises(study.StudyError, match=r"notebook throwaway: the kernel died or timed out \("):
        study.execute("throwaway", output, {"die": True})
    assert not output.exists()


def test_study_command_reports_the_failing_notebook_and_an_unknown_one(notebooks, capsys):
    book = nbformat.read(notebooks / "throwaway.ipynb", 4)
    book.cells[-1].source = "raise RuntimeError('broken on purpose')"
    nbformat.write(book, notebooks / "broken.ipynb")
    assert study.main(["--profile", "quick", "--only", "broken"]) == 1
    assert re.search(r"error: notebook broken failed in cell \d+: RuntimeError: broken on purpose",
                     capsys.readouterr().err)
    assert study.main(["--profile", "quick", "--only", "brokn"]) == 1
    assert re.search(r"error: notebook brokn: .*brokn.ipynb does not exist; expected one of \['broken', "
                     r"'throwaway'\]", capsys.readouterr().err)


def test_a_notebook_whose_recorded_output_changed_or_is_gone_runs_again(notebooks, tmp_path):
    log, output, folder = tmp_path / "log.txt", tmp_path / "out" / "notebooks" / "throwaway.ipynb", tmp_path / "out"
    table = folder / "tables" / "methods.csv"
    table.parent.mkdir(parents=True)
    (folder / "tables" / "older.csv").write_text("written before")
    os.utime(folder / "tables" / "older.csv", (time.time() - 60, time.time() - 60))
    params = {"profile": "quick", "log": str(log), "table": str(table)}
    assert study.execute("throwaway", output, params, outputs=folder) is True
    assert json.loads(study.manifest_path(output).read_text()) == {
        "../tables/methods.csv": study.file_sha256(table)}   # only what this execution wrote, relative
    assert study.execute("throwaway", output, params, outputs=folder) is False
    table.write_text("edited by hand")
    assert not study.is_complete(output, params)
    assert study.execute("throwaway", output, params, outputs=folder) is True and table.read_text() == "the table"
    table.unlink()
    assert study.execute("throwaway", output, params, outputs=folder) is True
    study.manifest_path(output).unlink()
    assert study.execute("throwaway", output, params, outputs=folder) is True and executions(log) == 4


def test_a_notebook_run_outside_the_checkout_finds_the_study_s_notebooks(tmp_path, monkeypatch):
    # a kernel started beside a copied notebook: the study's defaults still come from the checkout
    monkeypatch.chdir(tmp_path)
    prof = study.study_profile("quick", "")
    assert study.notebook_defaults("04_interclass_distance")["methods"] == ""
    assert study.output_dir(prof, "04_interclass_distance", {"profile": "quick", "methods": ""}).name == "quick"
    with pytest.raises(study.StudyError, match=r"notebook 99_nope: .*99_nope.ipynb does not exist; expected one of "
                                               r"\['00_synthetic_data'"):
        study.notebook_source("99_nope")
