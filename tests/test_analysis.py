"""Dataset-level distance matrices, their agreement, the agreement-over-training hook, pixel sampling."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from scipy.spatial.distance import cdist

from idd_lib import analysis, engine, runs
from idd_lib.models import build_segmentor

K = 5


class FeatureModel(torch.nn.Module):
    """Known, non-trivial features at half resolution: a fixed 1x1 mixing of pooled image channels."""

    def __init__(self, channels: int = 6, seed: int = 0):
        super().__init__()
        self.mix = torch.nn.Conv2d(3, channels, 1)
        torch.nn.init.normal_(self.mix.weight, generator=torch.Generator().manual_seed(seed))

    def forward(self, x):
        return {"feat": torch.tanh(self.mix(F.avg_pool2d(x, 2)))}


def toy_set(n: int = 21, h: int = 8, w: int = 12, seed: int = 0):
    """Images and labels with ignored pixels; class K-1 never occurs."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, h, w, generator=g)
    labels = torch.randint(0, K - 1, (n, h, w), generator=g)
    labels[:, 0, :] = 255
    return list(zip(images, labels))


def direct_matrix(model, data):
    """All features concatenated, centres by masked means, scipy cdist, mean-normalised; absent = NaN."""
    with torch.no_grad():
        feats = torch.cat([model(img[None])["feat"] for img, _ in data])      # N x C x h x w
    labels = torch.stack([lab for _, lab in data])[:, ::2, ::2]                # nearest at half size
    flat_f = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).double().numpy()
    flat_l = labels.flatten().numpy()
    present = [k for k in range(K) if (flat_l == k).any()]
    centres = np.stack([flat_f[flat_l == k].mean(0) for k in present])
    d = cdist(centres, centres)
    d /= d[~np.eye(len(present), dtype=bool)].mean()
    full = np.full((K, K), np.nan)
    full[np.ix_(present, present)] = d
    return full


def test_accumulated_distance_matrix_equals_a_direct_computation():
    model, data = FeatureModel(), toy_set()                   # 21 images: two loader batches
    accumulated = analysis.dataset_distance_matrices({"m": model}, data, K)["m"]
    np.testing.assert_allclose(accumulated, direct_matrix(model, data), rtol=1e-5, atol=1e-6)
    assert np.isnan(accumulated[K - 1]).all() and np.isnan(accumulated[:, K - 1]).all()
    first = analysis.dataset_distance_matrices({"m": model}, data, K, max_images=5)["m"]
    np.testing.assert_allclose(first, direct_matrix(model, data[:5]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(first, accumulated, equal_nan=True)


def test_class_feature_sums_keeps_the_training_mode_and_rejects_an_empty_set():
    model = FeatureModel().train()
    analysis.class_feature_sums(model, toy_set(3), K)
    assert model.training
    with pytest.raises(ValueError, match="no images"):
        analysis.class_feature_sums(model, [], K)


def test_matrix_agreement_properties_and_scipy():
    rng = np.random.default_rng(0)
    a = rng.random((6, 6))
    a = a + a.T
    b = a + rng.normal(0, 0.3, a.shape)
    same = analysis.matrix_agreement(a, a)
    assert same["pearson"] == pytest.approx(1) and same["spearman"] == pytest.approx(1) and same["frobenius_rel"] == 0
    scaled = analysis.matrix_agreement(2 * a, a)
    assert scaled["pearson"] == pytest.approx(1) and scaled["frobenius_rel"] == pytest.approx(1)
    iu = np.triu_indices(6, 1)
    got = analysis.matrix_agreement(b, a)
    assert got["pearson"] == pytest.approx(stats.pearsonr(b[iu], a[iu])[0])
    assert got["spearman"] == pytest.approx(stats.spearmanr(b[iu], a[iu])[0])
    b[0, :] = np.nan                                          # pairs of an absent class are left out
    keep = np.isfinite(b[iu])
    assert analysis.matrix_agreement(b, a)["pearson"] == pytest.approx(stats.pearsonr(b[iu][keep], a[iu][keep])[0])
    assert np.isnan(analysis.matrix_agreement(np.ones((6, 6)), a)["pearson"])
    with pytest.raises(ValueError, match="student: expected a square matrix"):
        analysis.matrix_agreement(a[:5, :5], a)


def test_teacher_agreement_hook_is_perfect_for_the_teacher_itself():
    teacher, other, data = FeatureModel(seed=0), FeatureModel(seed=1), toy_set()
    hook = analysis.TeacherAgreement(teacher, data, K)
    assert set(hook(teacher)) == {f"agreement/{k}" for k in analysis.AGREEMENT_KEYS}
    assert hook(teacher)["agreement/pearson"] == pytest.approx(1) and hook(teacher)["agreement/frobenius_rel"] == 0
    assert hook(other.train())["agreement/pearson"] < 0.999 and other.training


def _loss_rows(folder):
    return [(r["step"], r["loss/total"]) for r in runs.read_metrics(folder) if "loss/total" in r]


def test_engine_logs_agreement_at_every_validation_without_changing_the_run(tiny_profile, tmp_path):
    cfg = runs.student_config(tiny_profile, "baseline", 0)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, iterations=4, eval_every=2),
                              model=dataclasses.replace(cfg.model, dropout=0.5))
    calls = []

    def hook(model):
        calls.append(model.training)
        torch.rand(10)                                        # a hook that draws random numbers
        return {"agreement/pearson": 0.5}

    plain = engine.train(cfg, tmp_path / "plain", progress=False)
    hooked = engine.train(cfg, tmp_path / "hooked", progress=False, on_evaluate=hook)
    assert _loss_rows(tmp_path / "plain") == _loss_rows(tmp_path / "hooked")
    assert plain["miou"] == hooked["miou"]
    val_rows = [r for r in runs.read_metrics(tmp_path / "hooked") if r.get("split") == "val"]
    assert [r["step"] for r in val_rows] == [0, 2, 4] and all(r["agreement/pearson"] == 0.5 for r in val_rows)
    assert hooked["agreement/pearson"] == 0.5 and "agreement/pearson" not in plain
    assert len(calls) == 3


def test_every_student_run_records_its_agreement_curve(tiny_profile):
    profile = dataclasses.replace(tiny_profile, student_train=dataclasses.replace(tiny_profile.student_train,
                                                                                  eval_every=2))
    results = [runs.run_student(profile, method, 0, progress=False) for method in ("baseline", "idd")]
    history = analysis.agreement_history(results)
    assert sorted(history["method"].unique()) == ["baseline", "idd"]
    assert sorted(history[history["method"] == "baseline"]["step"]) == [0, 2, 4]
    last = history[history["step"] == 4].set_index("method")["pearson"]
    assert last["baseline"] == pytest.approx(results[0]["agreement/pearson"])
    assert history["pearson"].between(-1, 1).all()


def test_pixel_features_same_pixels_for_all_networks_and_capped():
    data = toy_set()
    models = {"a": FeatureModel(seed=0), "b": FeatureModel(seed=1)}
    feats, labels = analysis.pixel_features(models, data, K, per_class=50, seed=3)
    assert np.bincount(labels, minlength=K).tolist() == [50] * (K - 1) + [0]
    again, labels_again = analysis.pixel_features(models, data, K, per_class=50, seed=3)
    np.testing.assert_array_equal(labels, labels_again)
    np.testing.assert_array_equal(feats["a"], again["a"])
    _, capped = analysis.pixel_features(models, data, K, per_class=50, seed=3, max_points=20)
    assert len(capped) <= 20 and np.bincount(capped, minlength=K)[:K - 1].tolist() == [20 // K] * (K - 1)


def test_sample_pixels_is_class_balanced_with_replacement_for_rare_classes():
    labels = torch.zeros(2, 10, 10, dtype=torch.long)
    labels[0, 0, 0] = 1                                       # a one-pixel class
    labels[1, :2] = 255
    picks = analysis.sample_pixels(labels, 7, 3, seed=0)
    picked = labels.flatten()[picks]
    assert torch.bincount(picked, minlength=3).tolist() == [7, 7, 0]
    assert (picked != 255).all()


def test_heatmaps_and_curves_draw(tmp_path):
    from idd_lib import plots
    data = toy_set()
    matrices = analysis.dataset_distance_matrices({"teacher": FeatureModel(seed=0), "s": FeatureModel(seed=1)}, data, K)
    fig = plots.distance_heatmaps(matrices, [f"c{k}" for k in range(K)], agreement={"s": 0.5})
    assert "s (r = 0.50)" in [ax.get_title() for ax in fig.axes]
    assert all(p.stat().st_size > 1000 for p in plots.save_figure(fig, tmp_path / "h"))
    with pytest.raises(ValueError, match="reference"):
        plots.distance_heatmaps({"s": matrices["s"]}, [f"c{k}" for k in range(K)])
    history = analysis.agreement_history([])
    assert list(history.columns) == ["method", "seed", "step", *analysis.AGREEMENT_KEYS] and history.empty
    history = pd.DataFrame([{"method": m, "seed": s, "step": t, "pearson": 0.5 + 0.1 * t + 0.01 * s,
                             "spearman": 0.5, "frobenius_rel": 0.3}
                            for m in ("a", "b") for s in (0, 1) for t in (0, 1, 2)])
    fig = plots.agreement_curves(history)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["a (2 runs)", "b (2 runs)"]
    np.testing.assert_allclose(lines[0].get_ydata(), [0.505, 0.605, 0.705])


def test_real_segmentor_features_work_with_the_hook(tiny_profile):
    teacher = build_segmentor(tiny_profile.teacher, K)
    student = build_segmentor(tiny_profile.student, K)
    values = analysis.TeacherAgreement(teacher, toy_set(4, 32, 32), K)(student)
    assert -1 <= values["agreement/pearson"] <= 1
