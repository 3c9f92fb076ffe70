"""Smoke runs of every notebook through papermill on the quick profile (the README's `make study
PROFILE=quick` path), and the notebook parameter contract."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from idd_lib import presets, study
from study_outputs import study_outputs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs_and_with_a_parameters_cell():
    assert len(NOTEBOOKS) == 8
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert not any(c.outputs or c.execution_count for c in code), path.name
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        for line in tagged[0].source.splitlines():  # typed one-liners with a help comment
            assert ":" in line.split("=")[0] and "  # " in line, (path.name, line)


@pytest.mark.slow
def test_quick_study_runs_every_notebook_and_writes_the_report(quick_study):
    for name in study.STUDY_NOTEBOOKS:
        executed = quick_study / "notebooks" / f"{name}.ipynb"
        assert study.is_complete(executed, {"profile": "quick"}), name
    distill_runs = sorted(quick_study.glob("runs/*/02_distill.ipynb"))
    assert {p.parent.name.split("-s0-")[0] for p in distill_runs} == {"baseline", "kd", "idd", "idd+pid"}
    for stem in ("synthetic_samples", "synthetic_knobs", "teacher_loss", "miou", "distance_heatmaps", "tsne",
                 "agreement_curves", "position_probe", "position_sweep"):
        for suffix in (".png", ".pdf"):
            assert (quick_study / "figures" / f"{stem}{suffix}").stat().st_size > 1000, stem + suffix
    for table in ("methods", "per_class_iou", "distance_agreement", "runs", "tsne_timing", "position_probe",
                  "position_sweep"):
        assert (quick_study / "tables" / f"{table}.csv").is_file() and (quick_study / "tables" / f"{table}.md").is_file()
    report = (quick_study / "REPORT.md").read_text()
    assert "_missing" not in report
    for method in ("Baseline", "KD", "IDD", "IDD+PID"):   # printed tables name methods for readers
        assert f"| {method} " in report
    assert "val mIoU" in report and "figures/tsne.png" in report
    for stem in ("agreement_curves", "position_probe", "position_sweep"):
        assert f"figures/{stem}.png" in report and f"figures/{stem}.pdf" in report
    sweep_runs = [p.parent.name.rsplit("-", 2) for p in quick_study.glob("sweep/prior*/runs/*/result.json")]
    sweep = presets.get_profile("quick").sweep  # the quick sweep: a reduced copy at every prior, one seed
    assert {name for name, _, _ in sweep_runs} == set(sweep.methods) == {"idd", "idd+pid"}
    assert {seed for _, seed, _ in sweep_runs} == {f"s{s}" for s in sweep.seeds}
    assert len(sweep_runs) == len(sweep.priors) * len(sweep.methods) * len(sweep.seeds)
    assert "## Verdict" in report and "## Comparisons" in report
    assert (quick_study / "tables" / "position_sweep_seeds.csv").is_file()


def _output_text(output) -> str:
    return output.get("text", "") + "".join(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))


@pytest.mark.slow
def test_executed_notebooks_show_each_figure_once_with_progress_and_no_noise(quick_study):
    for name in study.STUDY_NOTEBOOKS:
        book = nbformat.read(quick_study / "notebooks" / f"{name}.ipynb", as_version=4)
        assert book.metadata.kernelspec.name == "idd-study", name
        for cell in (c for c in book.cells if c.cell_type == "code"):
            images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
            assert len(images) == cell.source.count("nb.show("), (name, cell.source[:80])
            text = "".join(map(_output_text, cell.outputs))
            assert "PosixPath" not in text and "without encryption" not in text, (name, text[:300])
    bars = {"03_ablation": "sweep (inline)", "07_position": "sweep (inline)"}  # idd_lib.sweep's bar over a grid
    for name, label in bars.items():
        book = nbformat.read(quick_study / "notebooks" / f"{name}.ipynb", as_version=4)
        assert any(label in _output_text(o) for c in book.cells for o in c.get("outputs", [])), name


@pytest.mark.slow
def test_second_study_run_skips_complete_notebooks(quick_study, capsys):
    study.run_study("quick", only=("01_teacher", "06_report"))
    out = capsys.readouterr().out
    assert "01_teacher: complete, skipped" in out and "06_report: done" in out   # the report is always rebuilt


def _papermill(name: str, tmp_path: Path, *parameters: str) -> None:
    done = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / f"{name}.ipynb"),
                           str(tmp_path / f"{name}.ipynb"), "-p", "profile", "quick", *parameters],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_exploring_and_runs_made_by_hand_never_change_what_the_study_reports(quick_study, tmp_path, capsys):
    before = study_outputs(quick_study)
    _papermill("04_interclass_distance", tmp_path, "-p", "methods", "baseline,idd")
    _papermill("05_tsne", tmp_path, "-p", "methods", "kd,idd+pid")
    _papermill("03_ablation", tmp_path, "-p", "methods", "baseline,idd", "-p", "seeds", "0")
    _papermill("02_distill", tmp_path, "-p", "method", "baseline", "-p", "seed", "1", "-p", "progress", "False")
    explored = sorted(p.name for p in (quick_study / "explore").iterdir())
    assert [name.rsplit("-", 1)[0] for name in explored] == ["03_ablation", "04_interclass_distance", "05_tsne"]
    assert (quick_study / "explore" / explored[1] / "figures" / "distance_heatmaps.png").is_file()
    capsys.readouterr()
    study.run_study("quick")
    assert study_outputs(quick_study) == before        # the seed-1 run and the explorations stay out
    assert capsys.readouterr().out.count("complete, skipped") == len(study.STUDY_NOTEBOOKS) - 1   # all but 06

    figure = quick_study / "figures" / "miou.png"
    figure.write_bytes(before["tables/methods.csv"])      # a study figure overwritten by hand
    capsys.readouterr()
    study.run_study("quick")
    assert "03_ablation: done" in capsys.readouterr().out and study_outputs(quick_study) == before


@pytest.mark.slow
def test_papermill_cli_runs_02_and_rejects_unknown_parameters(quick_study, tmp_path, shared_results):
    env_cmd = [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "02_distill.ipynb")]
    env = {**os.environ, "IDD_RESULTS": str(shared_results)}
    ok = subprocess.run(env_cmd + [str(tmp_path / "ok.ipynb"), "-p", "method", "kd", "-p", "seed", "0",
                                   "-p", "profile", "quick", "-p", "progress", "False"],
                        cwd=ROOT, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    meta = json.loads((tmp_path / "ok.ipynb").read_text())["metadata"]["papermill"]
    assert meta["parameters"]["method"] == "kd"
    bad = subprocess.run(env_cmd + [str(tmp_path / "bad.ipynb"), "-p", "methd", "kd", "-p", "profile", "quick"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode != 0
    assert "unknown notebook parameter(s) ['methd']" in bad.stderr + bad.stdout


def test_failed_notebook_names_the_cell_and_keeps_a_copy(tmp_path, monkeypatch):
    with pytest.raises(study.StudyError, match=r"notebook 02_distill failed in cell \d+: ValueError: method: "
                                               r"unknown method 'nope'"):
        study.execute("02_distill", tmp_path / "x.ipynb", {"profile": "quick", "method": "nope", "progress": False})
    assert (tmp_path / "x.failed.ipynb").is_file() and not (tmp_path / "x.ipynb").exists()


def test_help_notebook_lists_typed_parameters():
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook",
                          str(ROOT / "notebooks" / "02_distill.ipynb")], capture_output=True, text=True).stdout
    assert "method: str (default \"idd\")" in out and "seed: int (default 0)" in out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_help_notebook_lists_every_declared_parameter(path):
    """papermill silently drops a parameter whose help text it cannot parse (e.g. one holding '=')."""
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    declared = [line.split(":")[0] for line in cell.source.splitlines() if line.strip()]
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(path)],
                         capture_output=True, text=True).stdout
    listed = [name for name in declared if f"  {name}: " in out]
    assert listed == declared, f"{path.name}: papermill --help-notebook misses {sorted(set(declared) - set(listed))}"
