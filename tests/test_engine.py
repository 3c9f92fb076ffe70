import json
import math

import pytest
import torch

from idd_lib import engine, runs
from idd_lib.models import build_segmentor


def test_same_seed_twice_gives_identical_metrics(tiny_profile, tmp_path, monkeypatch):
    a = runs.run_student(tiny_profile, "idd+pid", seed=0, tag="a", progress=False)
    monkeypatch.setenv("IDD_RESULTS", str(tmp_path / "again"))  # one folder per config: run it again elsewhere
    b = runs.run_student(tiny_profile, "idd+pid", seed=0, tag="b", progress=False)
    assert a["run_dir"] != b["run_dir"]
    assert a["per_class_iou"] == b["per_class_iou"] and a["miou"] == b["miou"]
    rows_a = [r for r in runs.read_metrics(a["run_dir"]) if "loss/total" in r]
    rows_b = [r for r in runs.read_metrics(b["run_dir"]) if "loss/total" in r]
    assert [r["loss/total"] for r in rows_a] == [r["loss/total"] for r in rows_b]
    c = runs.run_student(tiny_profile, "idd+pid", seed=1, progress=False)
    assert [r["loss/total"] for r in runs.read_metrics(c["run_dir"]) if "loss/total" in r] != \
        [r["loss/total"] for r in rows_a]


def test_cpu_amp_trains_in_bf16_repeatably_and_warns_without_native_bf16(tiny_profile, tmp_path, monkeypatch):
    def losses(result):
        return [r["loss/total"] for r in runs.read_metrics(result["run_dir"]) if "loss/total" in r]

    fp32 = runs.run_student(tiny_profile, "idd", seed=0, progress=False)
    bf16 = runs.run_student(tiny_profile, "idd", seed=0, options={"train.cpu_amp": "true"}, progress=False)
    monkeypatch.setenv("IDD_RESULTS", str(tmp_path / "again"))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="train.cpu_amp: this CPU has no native bf16"):
        again = runs.run_student(tiny_profile, "idd", seed=0, options={"train.cpu_amp": "true"}, progress=False)
    assert losses(bf16) != losses(fp32) and losses(again) == losses(bf16)


def test_run_folder_contents_and_logged_terms(tiny_profile):
    result = runs.run_student(tiny_profile, "idd+pid", seed=0, progress=False)
    folder = engine.Path(result["run_dir"])
    for name in ("config.json", "provenance.json", "metrics.jsonl", "checkpoint.pt", "model.pt", "result.json"):
        assert (folder / name).is_file(), name
    train_rows = [r for r in runs.read_metrics(folder) if "loss/total" in r]
    assert {"loss/ce", "loss/kd", "loss/idd", "loss/pid"} <= set(train_rows[-1])
    assert [r["step"] for r in train_rows] == [2, 4]
    assert result["weights"] == {"ce": 1.0, "kd": 1.0, "idd": 5.0, "pid": 1.0}
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["versions"]["torch"] == torch.__version__.split("+")[0] or prov["versions"]["torch"]
    assert "commit" in prov["git"] and prov["device"].startswith("cpu")
    # the teacher was trained once and cached
    assert (runs.teacher_dir(tiny_profile) / "model.pt").is_file()


def test_finished_run_is_reused_not_retrained(tiny_profile):
    first = runs.run_student(tiny_profile, "baseline", seed=0, progress=False)
    model_file = engine.Path(first["run_dir"]) / "model.pt"
    stamp = model_file.stat().st_mtime_ns
    again = runs.run_student(tiny_profile, "baseline", seed=0, progress=False)
    assert again == first and model_file.stat().st_mtime_ns == stamp


def test_options_change_the_run_folder_and_the_config(tiny_profile):
    plain = runs.run_student(tiny_profile, "idd", seed=0, progress=False)
    cosine = runs.run_student(tiny_profile, "idd", seed=0, options={"loss.idd.metric": "cosine"}, progress=False)
    assert plain["run_dir"] != cosine["run_dir"] and "idd.metric=cosine" in cosine["run_dir"]
    saved = json.loads((engine.Path(cosine["run_dir"]) / "config.json").read_text())
    assert saved["loss"]["idd"]["metric"] == "cosine"


def test_pid_prefit_runs_once_before_training_and_its_readout_stays_frozen(tiny_profile, monkeypatch):
    from idd_lib.losses import PositionDistillation
    fits = []
    prefit = PositionDistillation.prefit

    def recorded(self, teacher_outputs):
        sizes = []

        def counted():  # consumed lazily, as the engine hands them over
            for outputs in teacher_outputs:
                sizes.append(outputs["feat"].shape[0])
                yield outputs

        final = prefit(self, counted())
        fits.append((sizes, {k: v.clone() for k, v in self.teacher_readout.state_dict().items()}))
        return final

    monkeypatch.setattr(PositionDistillation, "prefit", recorded)
    options = {"loss.pid.teacher_fit": "prefit", "loss.pid.prefit_steps": "6"}
    result = runs.run_student(tiny_profile, "idd+pid", seed=0, options=options, progress=False)
    assert fits[0][0] == [tiny_profile.data.batch_size] * 6 and math.isfinite(result["pid_prefit"])
    # the student learnt against the read-out the prefit left
    folder = engine.Path(result["run_dir"])
    saved = engine.load_state(folder / "checkpoint.pt")["criterion"]
    assert all(torch.equal(saved[f"terms.pid.teacher_readout.{k}"], v) for k, v in fits[0][1].items())
    # a resumed run does not fit again, and keeps the value
    (folder / "result.json").unlink()
    resumed = runs.run_student(tiny_profile, "idd+pid", seed=0, options=options, progress=False)
    assert len(fits) == 1 and resumed["pid_prefit"] == result["pid_prefit"]


def test_evaluate_perfect_predictions_and_absent_classes():
    class Oracle(torch.nn.Module):
        def forward(self, x):
            return {"out": x}
    labels = torch.tensor([[[0, 1], [1, 255]]])
    logits = torch.nn.functional.one_hot(labels.clamp(max=2), 4).permute(0, 3, 1, 2).float()
    metrics = engine.evaluate(Oracle(), [(logits, labels)], 4, torch.device("cpu"))
    assert metrics["miou"] == pytest.approx(100.0)
    assert torch.isnan(torch.tensor(metrics["per_class_iou"][3]))  # absent everywhere: not counted as 0


def test_teacher_checkpoint_for_other_classes_is_a_clear_error(tiny_profile, tmp_path):
    cfg = tiny_profile.teacher_config()
    torch.save(build_segmentor(cfg.model, 19).state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model.pt: checkpoint does not match .* 9 classes"):
        engine.load_model(tmp_path, cfg)
    with pytest.raises(FileNotFoundError, match="no trained model"):
        engine.load_model(tmp_path / "nowhere", cfg)


@pytest.mark.slow
def test_compiled_training_saves_a_plain_model_close_to_eager(tiny_profile, one_thread):
    """train.compile wraps the networks for the step only: model.pt has the plain module's keys."""
    eager = runs.run_student(tiny_profile, "idd+pid", seed=0, progress=False)
    compiled = runs.run_student(tiny_profile, "idd+pid", seed=0, options={"train.compile": "true"}, progress=False)
    assert compiled["run_dir"] != eager["run_dir"]
    cfg = runs.student_config(tiny_profile, "idd+pid", 0, options={"train.compile": "true"})
    engine.load_model(compiled["run_dir"], cfg)  # raises on "_orig_mod." keys
    losses = [[r["loss/total"] for r in runs.read_metrics(run["run_dir"]) if "loss/total" in r]
              for run in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=0.02)  # fused kernels round differently, same run


def test_student_runs_record_the_held_out_tune_split(tiny_profile):
    """Every synthetic run evaluates its final model on ``tune`` too (tuning's split); val stays the report's."""
    result = runs.run_student(tiny_profile, "kd", seed=0, progress=False)
    assert 0 <= result["tune_miou"] <= 100 and len(result["tune_per_class_iou"]) == len(result["per_class_iou"])
    rows = {r["split"]: r for r in runs.read_metrics(result["run_dir"]) if "split" in r}
    assert rows["tune"]["miou"] == result["tune_miou"] and rows["val"]["miou"] == result["miou"]
    assert result["tune_per_class_iou"] != result["per_class_iou"]   # another set of images


def test_no_tune_split_no_tune_numbers(tiny_profile):
    import dataclasses
    synthetic = dataclasses.replace(tiny_profile.data.synthetic, num_tune=0)
    profile = dataclasses.replace(tiny_profile, data=dataclasses.replace(tiny_profile.data, synthetic=synthetic))
    result = runs.run_student(profile, "baseline", seed=0, progress=False)
    assert "tune_miou" not in result and "miou" in result
