"""Faults during training: NaN/inf losses, a killed process, torn or corrupt checkpoints, and what
each run folder records (issue 6)."""
import dataclasses
import datetime
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import with_iterations
from idd_lib import engine, losses, presets, report, rundir, runs
from idd_lib.provenance import git_state

ROOT = Path(__file__).resolve().parents[1]


def train_rows(run_dir) -> list[dict]:
    return [r for r in runs.read_metrics(run_dir) if "loss/total" in r]


# --- NaN / inf --------------------------------------------------------------------------------------

def test_nan_loss_stops_with_step_and_term_and_keeps_the_last_good_checkpoint(tiny_profile, monkeypatch, tmp_path):
    cfg = with_iterations(tiny_profile, 8, checkpoint_every=2, log_every=1).run_config("baseline", 0)
    forward, calls = losses.SegmentationCE.forward, []

    def nan_at_step_5(self, *args):
        calls.append(1)
        value = forward(self, *args)
        return value * float("nan") if len(calls) == 5 else value

    monkeypatch.setattr(losses.SegmentationCE, "forward", nan_at_step_5)
    with pytest.raises(FloatingPointError, match=r"step 5: loss term 'ce' is nan; training stopped, last good "
                                                 r"checkpoint kept at .*checkpoint.pt"):
        engine.train(cfg, tmp_path, progress=False)
    assert engine.load_state(tmp_path / "checkpoint.pt")["step"] == 4
    assert not (tmp_path / "result.json").exists() and not (tmp_path / "model.pt").exists()
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2, 3, 4]  # the NaN step is not logged


def test_diverging_run_stops_at_the_first_non_finite_step(tiny_profile, tmp_path):
    cfg = with_iterations(tiny_profile, 6, log_every=1, lr=1e12).run_config("baseline", 0)
    message = r"step (\d+): loss term '(ce|total)' is (nan|inf).*\(none yet\)"
    with pytest.raises(FloatingPointError, match=message) as err:
        engine.train(cfg, tmp_path, progress=False)
    step = int(err.value.args[0].split()[1].rstrip(":"))
    rows = train_rows(tmp_path)
    assert step > 1 and [r["step"] for r in rows] == list(range(1, step))
    assert all(np.isfinite(r["loss/total"]) for r in rows)


# --- interruptions ----------------------------------------------------------------------------------

KILLED_RUN = textwrap.dedent("""
    import pickle, sys, time
    from pathlib import Path
    from idd_lib import losses, runs

    profile = pickle.loads(Path(sys.argv[1]).read_bytes())
    hang_at, ready = int(sys.argv[2]), Path(sys.argv[3])
    forward, calls = losses.DistillationCriterion.forward, []

    def forward_then_hang(self, *args):
        calls.append(1)
        if len(calls) == hang_at:  # steps 1 .. hang_at - 1 are done and logged: wait to be killed
            ready.write_text("ready")
            time.sleep(600)
        return forward(self, *args)

    losses.DistillationCriterion.forward = forward_then_hang
    runs.run_student(profile, "idd+pid", 0, tag="killed", progress=False)
""")


def test_killed_run_resumes_to_the_same_result_as_an_uninterrupted_one(tiny_profile, tmp_path, monkeypatch):
    profile = with_iterations(tiny_profile, 8, checkpoint_every=3, log_every=1)
    with monkeypatch.context() as elsewhere:  # one folder per config: the uninterrupted run in another results root
        elsewhere.setenv("IDD_RESULTS", str(tmp_path / "straight"))
        straight = runs.run_student(profile, "idd+pid", 0, tag="straight", progress=False)
    runs.ensure_teacher(profile, progress=False)  # cached: the killed process trains only the student

    (tmp_path / "profile.pkl").write_bytes(pickle.dumps(profile))
    (tmp_path / "run.py").write_text(KILLED_RUN)
    ready, output = tmp_path / "ready", tmp_path / "output.txt"
    with output.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "profile.pkl"), "8",
                                 str(ready)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300  # a safety net against a hung test, not a timing assertion
            while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ready.exists(), output.read_text()[-3000:]
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    folder = runs.run_dir(profile, runs.student_config(profile, "idd+pid", 0), "killed")
    # killed after the checkpoint of step 6, with step 7 logged after it
    assert engine.load_state(folder / "checkpoint.pt")["step"] == 6
    assert [r["step"] for r in train_rows(folder)] == [1, 2, 3, 4, 5, 6, 7]
    assert not (folder / "result.json").exists()
    # a checkpoint torn by a kill during the save is a temporary file, and never loaded; a log line
    # cut short by the kill is dropped
    (folder / ".checkpoint.pt.tmp4242").write_bytes(b"PK\x03\x04 torn checkpoint")
    with (folder / "metrics.jsonl").open("a") as log:
        log.write('{"step": 8, "loss/ce": 1.')

    resumed = runs.run_student(profile, "idd+pid", 0, tag="killed", progress=False)
    assert resumed["per_class_iou"] == straight["per_class_iou"] and resumed["miou"] == straight["miou"]
    assert resumed["steps"] == straight["steps"] == 8
    rows, expected = runs.read_metrics(folder), runs.read_metrics(straight["run_dir"])
    assert [r["step"] for r in train_rows(folder)] == list(range(1, 9))  # step 7 logged once, not twice
    drop_time = [{k: v for k, v in r.items() if k != "time"} for r in rows]
    assert drop_time == [{k: v for k, v in r.items() if k != "time"} for r in expected]
    provenance = json.loads((folder / "provenance.json").read_text())
    assert [entry["step"] for entry in provenance["resumed"]] == [6]


SIGNALLED_RUN = textwrap.dedent("""
    import os, pickle, signal, sys
    from pathlib import Path
    from idd_lib import losses, runs

    profile = pickle.loads(Path(sys.argv[1]).read_bytes())
    at_call, signum = int(sys.argv[2]), getattr(signal, sys.argv[3])
    forward, calls = losses.DistillationCriterion.forward, []

    def forward_then_signal(self, *args):
        calls.append(1)
        if len(calls) == at_call:  # as Slurm does: the signal arrives in the middle of a step
            os.kill(os.getpid(), signum)
        return forward(self, *args)

    losses.DistillationCriterion.forward = forward_then_signal
    runs.run_student(profile, "idd+pid", 0, tag="signalled", progress=False)
""")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_signalled_run_checkpoints_exits_and_resumes_to_the_uninterrupted_numbers(name, tiny_profile, tmp_path,
                                                                                   monkeypatch):
    """SIGTERM (a kill, Slurm's pre-emption and time limit) or SIGUSR1 (Slurm's --signal, submitit) at a
    random step: the run finishes that step, writes its checkpoint between the periodic ones, says so in
    one line and ends by the signal (a shell shows 128 + its number); the same call resumes and ends as
    an uninterrupted run."""
    import random

    profile = with_iterations(tiny_profile, 8, checkpoint_every=100, log_every=1)   # no periodic checkpoint
    with monkeypatch.context() as elsewhere:
        elsewhere.setenv("IDD_RESULTS", str(tmp_path / "straight"))
        straight = runs.run_student(profile, "idd+pid", 0, tag="straight", progress=False)
    runs.ensure_teacher(profile, progress=False)
    step = random.Random(name).randint(1, 7)
    (tmp_path / "profile.pkl").write_bytes(pickle.dumps(profile))
    (tmp_path / "run.py").write_text(SIGNALLED_RUN)
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "profile.pkl"), str(step), name],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    signum = getattr(signal, name)
    assert done.returncode == -signum, done.stderr[-3000:]          # ended by the signal, as without a handler
    assert f"error: stopped by {name} after step {step}: checkpoint written to" in done.stderr
    folder = runs.run_dir(profile, runs.student_config(profile, "idd+pid", 0), "signalled")
    assert engine.load_state(folder / "checkpoint.pt")["step"] == step and not (folder / "result.json").exists()
    resumed = runs.run_student(profile, "idd+pid", 0, tag="signalled", progress=False)
    assert resumed["miou"] == straight["miou"] and resumed["per_class_iou"] == straight["per_class_iou"], step
    assert [r["step"] for r in train_rows(folder)] == list(range(1, 9))


def test_run_killed_after_its_last_checkpoint_finishes_without_duplicate_rows(tiny_profile, tmp_path):
    cfg = tiny_profile.run_config("baseline", 0)
    first = engine.train(cfg, tmp_path, progress=False)
    rows = runs.read_metrics(tmp_path)
    (tmp_path / "result.json").unlink()  # killed between the final checkpoint and the result
    (tmp_path / "model.pt").unlink()
    again = engine.train(cfg, tmp_path, progress=False)
    assert again["per_class_iou"] == first["per_class_iou"] and (tmp_path / "model.pt").is_file()
    assert runs.read_metrics(tmp_path) == rows


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    import random
    np.random.seed(1)
    random.seed(2)
    np.random.rand(5), random.random(), np.random.randn()  # mid-stream: position and cached Gaussian matter
    rundir.atomic_save({"rng": rundir.rng_state()}, tmp_path / "c.pt")

    def draws():
        return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
                torch.rand(2).tolist())

    first = draws()
    np.random.rand(100), random.random(), torch.rand(7)
    rundir.restore_rng(rundir.load_state(tmp_path / "c.pt")["rng"])
    assert draws() == first


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    engine.atomic_save({"step": 3}, path)

    def torn_save(obj, file):
        Path(file).write_bytes(b"PK\x03\x04 half")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        engine.atomic_save({"step": 6}, path)
    assert engine.load_state(path) == {"step": 3}


def test_corrupt_checkpoint_is_a_clear_error_naming_it(tiny_profile, tmp_path):
    cfg = tiny_profile.run_config("baseline", 0)
    for content in (b"", b"PK\x03\x04 truncated zip", b"\x80\x02garbage"):
        (tmp_path / "checkpoint.pt").write_bytes(content)
        with pytest.raises(ValueError, match=rf"{tmp_path / 'checkpoint.pt'}: unreadable \(.*\); "
                                             r"delete it to restart this run from step 0"):
            engine.train(cfg, tmp_path, progress=False)


# --- results per run, provenance --------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_runs_write_only_their_own_folder_with_its_provenance_and_the_report_reads_it(tiny_profile, monkeypatch):
    results = Path(os.environ["IDD_RESULTS"])
    first = runs.run_student(tiny_profile, "baseline", seed=0, progress=False)
    before = _snapshot(results)
    second = runs.run_student(tiny_profile, "baseline", seed=1, progress=False)
    after = _snapshot(results)
    assert first["run_dir"] != second["run_dir"]
    touched = {p for p, stamp in after.items() if before.get(p) != stamp}
    assert touched and all(p.is_relative_to(second["run_dir"]) for p in touched), touched
    assert sorted(r["seed"] for r in runs.collect_results(tiny_profile)) == [0, 1]

    folder = Path(second["run_dir"])
    prov = json.loads((folder / "provenance.json").read_text())
    saved = json.loads((folder / "config.json").read_text())
    assert prov["seed"] == saved["train"]["seed"] == second["seed"] == 1
    assert saved["model"]["width"] == tiny_profile.student.width and saved["loss"]["method"] == "baseline"
    assert prov["git"]["commit"] == git_state()["commit"] and isinstance(prov["git"]["dirty"], bool)
    assert prov["versions"]["torch"] == torch.__version__.split("+")[0]
    assert prov["device"].startswith("cpu")
    started, finished = (datetime.datetime.fromisoformat(prov[k]) for k in ("started", "finished"))
    assert started <= finished <= datetime.datetime.now(datetime.timezone.utc)
    assert "resumed" not in prov

    # the report reads the study's grid: here seeds 0 and 1, so the second run is one of its rows
    monkeypatch.setitem(presets.PROFILES, "tiny", dataclasses.replace(tiny_profile, seeds=(0, 1)))
    prov.update(device="cpu (provenance marker)", git={"commit": "0123456789abcdef", "dirty": True})
    (folder / "provenance.json").write_text(json.dumps(prov))
    report.write_report("tiny")
    table = (results / "tiny" / "tables" / "runs.csv").read_text()
    assert "cpu (provenance marker)" in table and "0123456789+dirty" in table and folder.name in table


# --- safety -----------------------------------------------------------------------------------------

def _checkpoint_loads(source: str, name: str):
    """``torch.load(...)`` and ``torch.hub.load_state_dict_from_url(...)`` calls (both unpickle)."""
    import ast
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.hub", "torch.serialization"):
            imported = {a.name for a in node.names}
            assert not imported & {"load", "load_state_dict_from_url"}, f"{name}:{node.lineno}: imported by name"
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr == "load_state_dict_from_url" or (
                node.func.attr == "load" and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            yield node


def test_every_torch_load_is_weights_only():
    import nbformat
    sources = [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted((ROOT / "idd_lib").rglob("*.py"))]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        sources += [(f"{path.name} cell {i}", c.source) for i, c in enumerate(book.cells) if c.cell_type == "code"]
    calls = []
    for name, source in sources:
        for call in _checkpoint_loads(source, name):
            keywords = {k.arg: k.value for k in call.keywords}
            flag = keywords.get("weights_only")
            assert getattr(flag, "value", None) is True, f"{name}:{call.lineno}: a load without weights_only=True"
            calls.append(name)
        assert "pickle.load" not in source, f"{name}: unpickles data"
    assert calls, "expected at least the checkpoint loader"
