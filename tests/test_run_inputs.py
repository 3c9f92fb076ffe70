"""The real-data path and the inputs of a run: the teacher derived from the run's options, mixed
image sizes, safe run folders, moved results, damaged run files, option ranges, degenerate data,
dataset listings and write failures."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idd_lib import analysis, engine, probe, report, rundir, runs, study
from idd_lib.config import parse_assignments
from idd_lib.presets import get_profile
from idd_lib.data import datasets, layouts
from idd_lib.data.validation import DatasetError
from layout_fixtures import make_cityscapes, make_folder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def folder_options(root: Path, **extra: str) -> dict[str, str]:
    return {"data.dataset": "folder", "data.root": str(root), "data.crop_size": "32 32", "data.base_size": "32",
            **extra}


# --- 1, 2: the teacher is derived from the run's resolved config ------------------------------------

def test_a_students_data_and_teacher_options_select_and_train_its_own_teacher(tiny_profile, tmp_path):
    root = make_folder(tmp_path / "three", classes=("ground", "wall", "sky"))
    options = folder_options(root, **{"teacher_train.iterations": "3", "teacher.head_channels": "24"})
    result = runs.run_student(tiny_profile, "kd", 0, options=options, progress=False)
    cfg = runs.student_config(tiny_profile, "kd", 0, options=options)
    teacher = rundir.read_result(runs.teacher_dir(runs.teacher_of(cfg)))
    assert len(result["per_class_iou"]) == len(teacher["per_class_iou"]) == 3
    assert teacher["steps"] == 3 and result["teacher"] == runs.teacher_of(cfg).digest()
    saved = json.loads((runs.teacher_dir(runs.teacher_of(cfg)) / "config.json").read_text())
    assert saved["model"]["head_channels"] == 24 and saved["data"]["root"] == str(root)
    assert runs.teacher_dir(runs.teacher_of(cfg)) != runs.teacher_dir(tiny_profile)
    # idd-only reads no teacher output, but its agreement curve does: the same 3-class teacher
    only = runs.run_student(tiny_profile, "idd-only", 0, options=options, progress=False)
    assert only["teacher"] == teacher_digest(tiny_profile, options)
    # options that only change how images are read reuse the teacher
    assert teacher_digest(tiny_profile, {**options, "data.eval_batch_size": "1"}) == teacher_digest(tiny_profile, options)
    prior = {"data.synthetic.position_prior": "0"}
    assert teacher_digest(tiny_profile, prior) != tiny_profile.teacher_config().digest()


def teacher_digest(profile, options):
    return runs.teacher_of(runs.student_config(profile, "kd", 0, options=options)).digest()


def test_a_teacher_refuses_options_that_configure_only_a_student(tiny_profile):
    with pytest.raises(ValueError, match=r"options: model.width does not apply to a teacher; a teacher takes data.\*"):
        runs.ensure_teacher(tiny_profile, options={"model.width": "0.5"})
    with pytest.raises(ValueError, match="options: loss.idd.metric is set per run"):
        tiny_profile.configure({"loss.idd.metric": "cosine"})


PAPER_SMALL = ("data.crop_size=32 32,data.base_size=32,data.batch_size=2,data.num_workers=0,"
               "model.width=0.125,model.head_channels=16,model.pretrained=,"
               "teacher.width=0.125,teacher.head_channels=16,teacher.pretrained=,"
               "train.iterations=2,train.eval_every=0,train.checkpoint_every=0,train.log_every=1,"
               "teacher_train.iterations=2,teacher_train.eval_every=0,teacher_train.checkpoint_every=0")


@pytest.mark.slow
def test_paper_preset_runs_on_a_cityscapes_folder_from_launcher_notebook_and_study(tmp_path):
    """The real preset's networks (PSPNet-R101 -> PSPNet-R18, deep stems) at 1/8 width on a tiny
    Cityscapes-layout folder, through the three front doors."""
    root = make_cityscapes(tmp_path / "cityscapes")
    options = f"data.root={root},{PAPER_SMALL}"
    env = {**os.environ, "IDD_RESULTS": str(tmp_path / "results")}
    done = subprocess.run([sys.executable, "-m", "idd_lib.launch", "--profile", "paper-cityscapes", "--method", "idd",
                           "--no-progress", "--options", options], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and Path(summary["run_dir"]).parent == tmp_path / "results/paper-cityscapes/runs"

    import papermill
    os.environ["IDD_RESULTS"] = env["IDD_RESULTS"]  # the autouse fixture restores it
    papermill.execute_notebook(str(ROOT / "notebooks/03_ablation.ipynb"), str(tmp_path / "03.ipynb"), cwd=str(ROOT),
                               parameters={"profile": "paper-cityscapes", "methods": "kd,idd", "seeds": "0",
                                           "options": options}, kernel_name="python3", progress_bar=False)
    report_path = study.run_study("paper-cityscapes", only=("00_synthetic_data", "01_teacher", "06_report"),
                                  options=options)
    profile = get_profile("paper-cityscapes").configure(parse_assignments(options, "options"))
    finished = report.current_results(profile)
    assert sorted((r["method"], r["seed"]) for r in finished) == [("idd", 0), ("kd", 0)]  # idd: the launcher's run
    assert [r["run_dir"] for r in finished if r["method"] == "idd"] == [summary["run_dir"]]
    # 03 with other methods than the study's explores: its table goes to explore/, its kd run (one of the
    # study grid's) into the report's runs; the launcher's run, made by hand with run options, stays out
    text = report_path.read_text()
    kd_run = next(Path(r["run_dir"]).name for r in finished if r["method"] == "kd")
    assert f"| {kd_run} " in text and Path(summary["run_dir"]).name not in text
    assert [p.parent.name for p in report_path.parent.glob("explore/03_ablation-*/tables/methods.md")] == ["tables"]
    assert (report_path.parent / "notebooks/01_teacher.ipynb").exists()
    assert not (report_path.parent / "notebooks/00_synthetic_data.ipynb").exists()  # not synthetic data


# --- 3: mixed image sizes ---------------------------------------------------------------------------

SIZES = ((32, 64), (40, 48), (24, 72))


def make_mixed_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 3)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            h, w = SIZES[i % len(SIZES)]
            label = np.zeros((h, w), np.uint8)
            label[h // 2:] = 1
            label[:, w // 2:] += 2 * (i % 2)
            image = (label[..., None] * np.array([60, 20, 90]) + rng.integers(0, 30, (h, w, 3))).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"im{i}.png")
            Image.fromarray(label).save(root / "masks" / split / f"im{i}.png")
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    return root


def test_validation_images_of_three_sizes_train_evaluate_and_analyse(tiny_profile, tmp_path):
    options = folder_options(make_mixed_folder(tmp_path / "mixed"), **{"data.eval_batch_size": "1"})
    result = runs.run_student(tiny_profile, "idd", 0, options=options, progress=False)
    assert result["steps"] == tiny_profile.student_train.iterations and np.isfinite(result["miou"])
    assert np.isfinite(result["agreement/frobenius_rel"])  # the teacher-agreement hook read every size
    cfg = runs.student_config(tiny_profile, "idd", 0, options=options)
    val = datasets.build_dataset(cfg.data, "val", train=False)
    assert len({tuple(val[i][0].shape[-2:]) for i in range(len(val))}) == 3
    model = engine.load_model(result["run_dir"], cfg)
    features, labels = analysis.pixel_features({"s": model}, val, 4, per_class=5)
    assert len(features["s"]) == len(labels) > 0
    assert set(probe.probe_networks({"s": model}, val, val)["s"]) >= {"x", "y", "mean"}


# --- 4, 5: run folders and results files -----------------------------------------------------------

def test_run_folders_are_single_safe_names_and_labels_never_merge_configs(tiny_profile, tmp_path):
    cases = [({}, {"data.root": "", "data.synthetic.seed": "1"}, ""), ({}, {}, "../../../../escaped"),
             ({}, {}, "x" * 300), ({"idd": 5.0000001}, {}, ""), ({"idd": 5.0000002}, {}, "")]
    runs_root = Path(os.environ["IDD_RESULTS"]) / tiny_profile.name / "runs"
    for weights, options, tag in cases:
        cfg = runs.student_config(tiny_profile, "idd", 0, weights, options)
        folder = runs.run_dir(tiny_profile, cfg, tag or runs.override_tag(weights, options))
        assert folder.parent == runs_root and len(folder.name) < 100 and "/" not in folder.name
    slash = {"data.root": str(tmp_path)}  # a value with slashes: still one folder under runs/
    cfg = runs.student_config(tiny_profile, "kd", 0, options=slash)
    assert runs.run_dir(tiny_profile, cfg, runs.override_tag(None, slash)).parent == runs_root
    labels = {runs.override_tag({"idd": 5.0000001}, None), runs.override_tag({"idd": 5.0000002}, None)}
    assert labels == {"idd=5.0000001", "idd=5.0000002"}
    rows = [{"method": "idd", "tag": "mine", "variant": v, "seed": 0, "miou": 1.0} for v in ("aaaaaaa1", "bbbbbbb2")]
    assert report.results_frame(rows)["label"].nunique() == 2


def test_a_moved_results_folder_reads_the_same(tiny_profile, tmp_path, monkeypatch):
    profile = tiny_profile.configure({"train.eval_every": "2"})
    result = runs.run_student(profile, "idd", 0, progress=False)
    on_disk = json.loads((Path(result["run_dir"]) / rundir.RESULT).read_text())
    assert not Path(on_disk["run_dir"]).is_absolute()
    moved = tmp_path / "moved"
    shutil.move(os.environ["IDD_RESULTS"], moved)
    monkeypatch.setenv("IDD_RESULTS", str(moved))
    [found] = runs.collect_results(profile)
    assert Path(found["run_dir"]).is_relative_to(moved)
    assert len(analysis.agreement_history([found])) >= 2
    table = report.runs_table(report.results_frame([found]))
    assert table["commit"][0] != "unknown" and table["device"][0].startswith("cpu")


# --- 6: damaged run files --------------------------------------------------------------------------

def test_damaged_run_files_are_named_and_the_report_skips_them(tiny_profile):
    first = runs.run_student(tiny_profile, "baseline", 0, progress=False)
    second = runs.run_student(tiny_profile, "baseline", 1, progress=False)
    damaged = Path(first["run_dir"]) / rundir.RESULT
    damaged.write_text(damaged.read_text()[:40])
    with pytest.warns(UserWarning, match=f"skipped a run: {damaged}: damaged JSON"):
        assert [r["seed"] for r in report.current_results(tiny_profile)] == [1]
    with pytest.raises(ValueError, match=f"{damaged}: damaged JSON .*delete it to recompute it"):
        runs.run_student(tiny_profile, "baseline", 0, progress=False)
    (Path(second["run_dir"]) / rundir.PROVENANCE).write_text('{"git": ')
    with pytest.warns(UserWarning, match="provenance.json: damaged JSON"):
        table = report.runs_table(report.results_frame([rundir.read_result(Path(second["run_dir"]))]))
    assert table["commit"][0] == "unknown"
    metrics = Path(second["run_dir"]) / rundir.METRICS
    metrics.write_text(metrics.read_text() + '{"step": 9, "loss/ce": 1.\n')
    with pytest.warns(UserWarning, match=f"{metrics}: line .* is damaged and skipped"):
        assert all("step" in row for row in runs.read_metrics(second["run_dir"]))
    model = runs.teacher_dir(tiny_profile) / rundir.MODEL
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{model}: unreadable .*delete the folder .* to train this run again"):
        runs.ensure_teacher(tiny_profile, progress=False)


# --- 7, 8: options checked before any work, degenerate settings refused ----------------------------

BAD_OPTIONS = [
    ("train.iterations", "0", "expects an integer >= 1"), ("train.iterations", "-5", "expects an integer >= 1"),
    ("data.batch_size", "0", "an integer >= 2"), ("data.batch_size", "-1", "an integer >= 2"),
    ("data.batch_size", "1", "an integer >= 2"), ("train.log_every", "0", ">= 1"),
    ("data.crop_size", "0 0", "two sizes from 1 to 8192"), ("data.scale_range", "0 0", "0 < low <= high"),
    ("train.device", "tpu", "auto, cpu, cuda or cuda:N"), ("loss.pid.targets", "", "one or more position maps"),
    ("loss.weights", "idd", "not an option; set it with the weights parameter"), ("model.width", "0", ">= 0.0625"),
    ("train.lr", "nan", "a finite number"), ("data.synthetic.height", "8", "height and width must be >= 16"),
    ("loss.idd.metric", "manhattan", "idd.metric must be one of"), ("model.head", "fcn", "model.head"),
    ("data.eval_batch_size", "0", ">= 1"), ("teacher_train.iterations", "0", "teacher_train.iterations expects"),
    ("data.crop_size", "99999 99999", "two sizes from 1 to 8192"), ("train.iterations", "1.5", "expects an integer"),
]


@pytest.mark.parametrize("key, value, expected", BAD_OPTIONS, ids=[f"{k}={v}" for k, v, _ in BAD_OPTIONS])
def test_bad_options_are_one_line_errors_naming_the_option_before_any_work(tiny_profile, key, value, expected):
    results = Path(os.environ["IDD_RESULTS"])
    with pytest.raises(ValueError, match=expected) as caught:
        runs.run_student(tiny_profile, "idd+pid", 0, options={key: value}, progress=False)
    message = str(caught.value)
    assert "\n" not in message and key.removeprefix("loss.").split(".")[-1] in message
    assert not any(results.rglob("*.pt"))  # nothing trained, not even the teacher


def test_seeds_out_of_range_are_refused_by_the_grid_and_the_launcher(tiny_profile):
    with pytest.raises(ValueError, match=r"train.seed expects an integer from 0 to 1000000, got 99999999999"):
        study.ablation_grid(get_profile("quick"), "baseline", "99999999999")
    done = subprocess.run([sys.executable, "-m", "idd_lib.launch", "--profile", "quick", "--method", "kd",
                           "--options", "data.batch_size=1"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: options: data.batch_size expects an integer >= 2 (BatchNorm needs two images per batch), got 1"]


def unlabelled(root: Path, split: str) -> None:
    for mask in (root / "masks" / split).glob("*.png"):
        Image.fromarray(np.full((32, 64), 255, np.uint8)).save(mask)


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_without_labelled_pixels_is_refused_naming_it(tiny_profile, tmp_path, split):
    root = make_folder(tmp_path / "data")
    unlabelled(root, split)
    with pytest.raises(DatasetError, match=rf"{root} \({split} split\): none of its \d+ label files holds a pixel"):
        runs.run_student(tiny_profile, "baseline", 0, options=folder_options(root), progress=False)


# --- 9: dataset listings ---------------------------------------------------------------------------

def test_class_files_and_listings_are_checked(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "classes.txt").write_text("ground\n\nwall\nsky\n")
    with pytest.raises(DatasetError, match="classes.txt: line 2 is blank"):
        layouts.read_class_names(root)
    (root / "classes.txt").write_text("ground\nwall\nground\n")
    with pytest.raises(DatasetError, match="class name 'ground' appears more than once"):
        layouts.read_class_names(root)
    (root / "classes.txt").write_text("ground\nwall\nsky\nthing\n\n")
    assert layouts.read_class_names(root) == ("ground", "wall", "sky", "thing")
    shutil.copy(root / "images/train/img0.png", root / "images/train/img0.jpg")
    with pytest.raises(DatasetError, match="img0.png: a second image for img0.jpg's label; expected one image per stem"):
        layouts.list_split("folder", root, "train")


# --- 10: write failures ----------------------------------------------------------------------------

@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only")])
def test_write_failures_name_the_file_and_leave_no_temporary_file(tiny_profile, tmp_path, monkeypatch, code, reason):
    path = tmp_path / "checkpoint.pt"
    rundir.atomic_save({"step": 1}, path)

    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(ValueError, match=rf"{path}: cannot write \(.*{reason}.*\); earlier files are intact"):
        rundir.atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert rundir.load_state(path) == {"step": 1}
    cfg = tiny_profile.run_config("baseline", 0)
    datasets.build_dataset(cfg.data, "train", train=True)  # generated before writes fail
    monkeypatch.setattr(Path, "write_text", lambda self, text: (_ for _ in ()).throw(OSError(code, "")))
    with pytest.raises(ValueError, match=rf"config.json: cannot write \(.*{reason}"):
        engine.train(cfg, tmp_path / "run", progress=False)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_weights_turned_non_finite_by_the_last_update_never_finish_a_run(tiny_profile, tmp_path, monkeypatch):
    """The per-step check reads the losses, computed before the update; a last update that breaks
    the weights (seen on the paper preset at 2 steps) left a 'finished' run of argmax-of-NaN."""
    step = engine.training_step
    calls = []

    def last_update_breaks(network, *args, **kwargs):
        out = step(network, *args, **kwargs)
        calls.append(1)
        if len(calls) == tiny_profile.student_train.iterations:
            with torch.no_grad():
                next(network.parameters()).fill_(float("nan"))
        return out
    monkeypatch.setattr(engine, "training_step", last_update_breaks)
    with pytest.raises(FloatingPointError, match="step 4: the network's weights are not finite after its last update"):
        engine.train(tiny_profile.run_config("baseline", 0), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / rundir.RESULT).exists()


def test_mixed_sizes_with_batched_evaluation_and_wide_labels_are_refused_before_training(tiny_profile, tmp_path):
    root = make_mixed_folder(tmp_path / "mixed")
    with pytest.raises(DatasetError, match=r"data.eval_batch_size: the val images of .* have 3 sizes "
                                           r"\(.*\); set data.eval_batch_size=1"):
        runs.run_student(tiny_profile, "kd", 0, options=folder_options(root), progress=False)
    assert not list((Path(os.environ["IDD_RESULTS"]) / "cache" / "teachers").glob("*"))  # no empty folder left
    wide = np.zeros((32, 64), np.uint16)
    wide[:4] = 600
    for mask in (root / "masks" / "train").glob("*.png"):
        Image.fromarray(wide).save(mask)
    with pytest.raises(DatasetError, match=r"masks/train/im0.png: label values range 0..600; expected 8-bit"):
        runs.run_student(tiny_profile, "kd", 0, options=folder_options(root, **{"data.eval_batch_size": "1"}),
                         progress=False)


def test_teacher_options_are_named_as_such_and_synthetic_knobs_ignored_on_real_data(tiny_profile, tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes")
    with pytest.raises(FileNotFoundError, match=r"^teacher.pretrained: .*resnet101-imagenet.pth is not a file"):
        runs.student_config(get_profile("paper-cityscapes"), "kd", 0,
                            options={"data.root": str(root), "model.pretrained": ""})
    folder = folder_options(make_folder(tmp_path / "f"))  # the generator's knobs select no other run of a folder
    assert runs.student_config(tiny_profile, "kd", 0, options={**folder, "data.synthetic.seed": "5"}).digest() == \
        runs.student_config(tiny_profile, "kd", 0, options=folder).digest()


def test_runs_of_another_teacher_are_labelled_and_a_reused_run_says_so(tiny_profile):
    runs.run_student(tiny_profile, "kd", 0, tag="first", progress=False)
    with pytest.warns(UserWarning, match="already ran as 'first'; its result is returned"):
        runs.run_student(tiny_profile, "kd", 0, tag="second", progress=False)
    runs.run_student(tiny_profile, "kd", 0, options={"teacher_train.iterations": "3"}, progress=False)
    labels = sorted(report.results_frame(report.current_results(tiny_profile))["label"])
    other = runs.teacher_of(runs.student_config(tiny_profile, "kd", 0, options={"teacher_train.iterations": "3"}))
    assert labels == ["kd [first]", f"kd [teacher_train.iterations=3] (teacher {other.digest()[:6]})"]
