"""Shipped teachers: a quick-profile teacher trained here (2 steps) is shipped into a temporary
teachers folder, then installed instead of training when its digest matches; a tampered artifact is
a one-line error that leaves the cache as it was; another teacher option trains its own teacher."""
import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import torch

from idd_lib import engine, presets, report, rundir, runs, teachers
from idd_lib.config import fields_digest
from idd_lib.teachers import __main__ as teachers_cli

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {"teacher_train.iterations": "2"}
pytestmark = pytest.mark.usefixtures("one_thread")


class Trained(RuntimeError):
    """Raised instead of training: a test that expects no training sees it, one that expects training catches it."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """The quick profile's teacher at 2 iterations, trained once here; tests copy or ship it."""
    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IDD_RESULTS", str(folder))
        profile = presets.study_profile("quick", runs.join_options(OPTIONS))
        runs.ensure_teacher(profile, progress=False, use_shipped=False)
        return profile, runs.teacher_dir(profile)


@pytest.fixture
def shipped(trained, tmp_path, monkeypatch):
    """The trained teacher shipped into this test's own teachers folder ($IDD_TEACHERS)."""
    profile, folder = trained
    root = tmp_path / "teachers"
    monkeypatch.setenv("IDD_TEACHERS", str(root))
    return teachers.ship(profile.teacher_config(), folder, "quick", options=OPTIONS)


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise Trained("training started")
    monkeypatch.setattr(engine, "setup", refuse)


def _state(path: Path) -> dict:
    return rundir.load_state(path)


def test_the_shipped_teacher_is_installed_instead_of_trained(trained, shipped, no_training, capsys):
    profile, original = trained
    model, result = runs.ensure_teacher(profile, progress=False)  # engine.setup refuses: nothing trains
    folder = runs.teacher_dir(profile)
    assert folder != original and (folder / rundir.RESULT).is_file()
    assert "installed the shipped teacher quick" in capsys.readouterr().out
    # the round trip keeps weights, metrics and log exactly
    expected = _state(original / rundir.MODEL)
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items()) and len(expected) == len(
        model.state_dict())
    before = rundir.read_result(original)
    assert result["miou"] == before["miou"] and result["per_class_iou"] == before["per_class_iou"]
    assert {k: v for k, v in result.items() if k != "run_dir"} == {k: v for k, v in before.items() if k != "run_dir"}
    assert (folder / rundir.METRICS).read_bytes() == (original / rundir.METRICS).read_bytes()
    assert json.loads((folder / rundir.CONFIG).read_text()) == json.loads((original / rundir.CONFIG).read_text())
    source = rundir.read_provenance(folder)["source"]
    assert source["artifact"] == str(shipped) and len(source["manifest_sha256"]) == 64
    assert teachers.is_installed_copy(folder) and not teachers.is_installed_copy(original)
    assert report._teacher_origin(folder).startswith(f"The shipped teacher (`{shipped}`), trained at commit")
    cpu = json.loads((shipped / teachers.MANIFEST).read_text())["machine"]["cpu"]
    assert f"on {cpu}; installed" in report._teacher_origin(folder)
    assert report._teacher_origin(original) == "Trained by this study."
    # a second call finds the finished teacher in the cache: nothing is installed again
    runs.ensure_teacher(profile, progress=False)
    assert "installed" not in capsys.readouterr().out


def test_the_manifest_records_digest_config_commit_metrics_machine_time_and_hashes(trained, shipped):
    profile, original = trained
    manifest = json.loads((shipped / teachers.MANIFEST).read_text())
    cfg = profile.teacher_config()
    assert manifest["config_digest"] == cfg.digest() == fields_digest(manifest["config"])
    assert manifest["config"]["train"]["iterations"] == 2 and manifest["options"] == OPTIONS
    result = rundir.read_result(original)
    assert manifest["metrics"]["miou"] == result["miou"]
    assert list(manifest["metrics"]["per_class_iou"].values()) == result["per_class_iou"]
    assert manifest["wall_time_s"] == result["wall_time_s"] and manifest["steps"] == 2
    assert manifest["commit"] == rundir.read_provenance(original)["git"]["commit"]
    assert set(manifest["machine"]) >= {"cpu", "threads", "torch"} and manifest["machine"]["threads"] == 1
    assert manifest["files"][rundir.MODEL] == teachers.file_sha256(original / rundir.MODEL)
    assert "host" not in manifest["provenance"]


def _tamper_weights(folder: Path) -> None:
    data = bytearray((folder / rundir.MODEL).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / rundir.MODEL).write_bytes(bytes(data))


def _edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / teachers.MANIFEST).read_text())
    edit(manifest)
    (folder / teachers.MANIFEST).write_text(json.dumps(manifest))


def _other_network(folder: Path) -> None:
    """Weights of another network, with the manifest's hash updated: only loading them can tell."""
    state = {k: v[..., :1].clone() if v.dim() else v for k, v in _state(folder / rundir.MODEL).items()}
    torch.save(state, folder / rundir.MODEL)
    _edit_manifest(folder, lambda m: m["files"].update({rundir.MODEL: teachers.file_sha256(folder / rundir.MODEL)}))


def _recorded_digest(manifest: dict) -> None:
    manifest["config_digest"] = "0123456789ab"


def _config_edited(manifest: dict) -> None:
    manifest["config"]["model"]["width"] = 0.25


TAMPERING = {
    "weights": (_tamper_weights, r"model\.pt: sha256 [0-9a-f]{16}\.\.\. does not match the manifest's"),
    "recorded digest": (lambda f: _edit_manifest(f, _recorded_digest),
                        r"manifest\.json: config_digest 0123456789ab does not match its config \(digest"),
    "config": (lambda f: _edit_manifest(f, _config_edited), r"manifest\.json: config_digest \w+ does not match its config"),
    "weights hash": (lambda f: _edit_manifest(f, lambda m: m["files"].update({rundir.MODEL: "0" * 64})),
                     r"model\.pt: sha256 \w+\.\.\. does not match the manifest's 0000000000000000"),
    "another network": (_other_network, r"model\.pt: not the weights of the configured teacher network \(size mismatch"),
    "log": (lambda f: (f / rundir.METRICS).write_text("{}\n"), r"metrics\.jsonl: sha256"),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_a_tampered_artifact_is_a_one_line_error_and_the_cache_is_left_as_it_was(trained, shipped, tampering,
                                                                                  no_training):
    profile, _ = trained
    damage, message = TAMPERING[tampering]
    damage(shipped)
    folder = runs.teacher_dir(profile)
    folder.mkdir(parents=True)  # an unstarted run's folder (no checkpoint): it must survive the failed install
    (folder / "config.json").write_text("{}")
    with pytest.raises(teachers.ShippedTeacherError, match=message) as caught:
        runs.ensure_teacher(profile, progress=False)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no staging folder left
    assert [p.name for p in folder.iterdir()] == ["config.json"]


def test_a_changed_teacher_option_trains_its_own_teacher(trained, shipped, no_training, capsys):
    profile, _ = trained
    other = presets.study_profile("quick", runs.join_options({"teacher_train.iterations": "3"}))
    with pytest.raises(Trained):
        runs.ensure_teacher(other, progress=False)
    data = presets.study_profile("quick", runs.join_options({**OPTIONS, "data.synthetic.noise": "0.05"}))
    with pytest.raises(Trained):
        runs.ensure_teacher(data, progress=False)
    assert "installed" not in capsys.readouterr().out
    assert not runs.teacher_dir(profile).exists()


def test_an_interrupted_training_resumes_instead_of_installing(trained, shipped):
    profile, _ = trained
    folder = runs.teacher_dir(profile)
    folder.mkdir(parents=True)
    (folder / rundir.CHECKPOINT).write_bytes(b"")
    assert teachers.install_shipped(profile.teacher_config(), folder) is False
    assert [p.name for p in folder.iterdir()] == [rundir.CHECKPOINT]


def test_make_teacher_trains_here_replacing_an_installed_copy(trained, shipped, no_training, capsys):
    profile, _ = trained
    runs.ensure_teacher(profile, progress=False)
    folder = runs.teacher_dir(profile)
    assert teachers.is_installed_copy(folder)
    with pytest.raises(Trained):  # the shipped file is ignored: it trains (here: reaches the training)
        teachers_cli.main(["train", "--profile", "quick", "--options", runs.join_options(OPTIONS)])
    assert "removing" in capsys.readouterr().out and not (folder / rundir.RESULT).exists()
    with pytest.raises(Trained):
        runs.ensure_teacher(profile, progress=False, use_shipped=False)


def test_make_teacher_keeps_a_teacher_trained_here_unless_asked_to_retrain(trained, no_training, capsys):
    profile, original = trained
    folder = runs.teacher_dir(profile)
    shutil.copytree(original, folder)
    assert teachers_cli.main(["train", "--profile", "quick", "--options", runs.join_options(OPTIONS)]) == 0
    assert "already trained here" in capsys.readouterr().out and (folder / rundir.RESULT).exists()
    with pytest.raises(Trained):
        teachers_cli.main(["train", "--profile", "quick", "--options", runs.join_options(OPTIONS), "--retrain"])
    assert "the earlier teacher" in capsys.readouterr().out and not (folder / rundir.RESULT).exists()


def test_ship_refuses_an_installed_copy_an_unfinished_folder_and_another_config(trained, shipped, tmp_path):
    profile, original = trained
    runs.ensure_teacher(profile, progress=False)
    with pytest.raises(teachers.ShippedTeacherError, match="installed from a shipped teacher, not trained here"):
        teachers.ship(profile.teacher_config(), runs.teacher_dir(profile), "again")
    with pytest.raises(teachers.ShippedTeacherError, match="no finished teacher here"):
        teachers.ship(profile.teacher_config(), tmp_path / "empty", "again")
    other = presets.study_profile("quick", runs.join_options({"teacher_train.iterations": "3"}))
    with pytest.raises(teachers.ShippedTeacherError, match=f"holds config {profile.teacher_config().digest()}"):
        teachers.ship(other.teacher_config(), original, "again")
    assert sorted(p.name for p in shipped.parent.iterdir()) == ["quick"]


def test_the_check_command_verifies_every_shipped_teacher(trained, shipped, capsys):
    assert teachers_cli.main(["check"]) == 0
    assert f"{shipped}: ok (teacher {trained[0].teacher_config().digest()}" in capsys.readouterr().out
    _tamper_weights(shipped)
    assert teachers_cli.main(["check"]) == 1
    assert "does not match the manifest's" in capsys.readouterr().err


def test_fields_digest_of_a_stored_config_is_its_digest(tiny_profile):
    for cfg in (presets.get_profile("default").teacher_config(), tiny_profile.run_config("idd", 2),
                presets.get_profile("paper-cityscapes").teacher_config()):
        stored = json.loads(json.dumps(cfg.to_dict(), default=str))
        assert fields_digest(stored) == cfg.digest()
        stored["train"]["lr"] *= 2
        assert fields_digest(stored) != cfg.digest()


def test_shipped_teachers_are_package_data_and_not_ignored_by_git():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["idd_lib.teachers"]
    assert sorted(globs) == sorted(f"*/{name}" for name in (*teachers.FILES, teachers.MANIFEST))
    if shutil.which("git") and (ROOT / ".git").exists():
        paths = [f"idd_lib/teachers/default/{name}" for name in (*teachers.FILES, teachers.MANIFEST)]
        ignored = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True).stdout
        assert ignored == ""


def test_every_shipped_teacher_is_the_current_teacher_of_its_profile():
    """The artifacts in the package: each one's files match its manifest, and its profile still
    resolves to its config (a changed profile needs the teacher retrained and re-shipped)."""
    found = sorted(Path(teachers.__file__).parent.glob(f"*/{teachers.MANIFEST}"))
    if not found:
        pytest.skip("no teacher ships in this tree yet (make teacher, make ship-teacher)")
    for path in found:
        manifest = teachers.read_manifest(path)
        base = manifest.get("base_profile", manifest["profile"])
        cfg = teachers_cli.resolve(base, manifest["options"], manifest.get("prior"))[0].teacher_config()
        assert manifest["config_digest"] == cfg.digest(), f"{path}: stale; retrain and re-ship the teacher"
        teachers.check_artifact(path.parent, cfg)


def test_a_sweep_teacher_ships_under_its_prior_and_is_found_by_its_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("IDD_RESULTS", str(tmp_path / "results"))
    profile, name = teachers_cli.resolve("quick", "teacher_train.iterations=2", 0.0)
    assert name == "quick-prior0" and profile.data.synthetic.position_prior == 0.0
    runs.ensure_teacher(profile, progress=False, use_shipped=False)
    shipped = teachers.ship(profile.teacher_config(), runs.teacher_dir(profile), name, root=tmp_path / "teachers",
                            options=dict(profile.options), base=("quick", 0.0))
    manifest = teachers.read_manifest(shipped / teachers.MANIFEST)
    assert (manifest["base_profile"], manifest["prior"]) == ("quick", 0.0)
    again = teachers_cli.resolve(manifest["base_profile"], manifest["options"], manifest["prior"])[0]
    assert again.teacher_config().digest() == manifest["config_digest"]
    assert teachers.find_shipped(manifest["config_digest"], tmp_path / "teachers") == shipped
