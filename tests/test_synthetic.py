"""Tests of the procedural Cityscapes-like generator (idd_lib.data.synthetic)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idd_lib import config
from idd_lib.config import config_digest
from idd_lib.data import synthetic
from idd_lib.data.synthetic import (
    EGO_VEHICLE_ID,
    LABEL_ID_TO_TRAIN_ID,
    SYNTH_CLASSES,
    UNLABELED_ID,
    SyntheticConfig,
    ensure_generated,
    generate,
    plot_samples,
    render_item,
    render_scene,
)
from idd_lib.presets import get_profile

SMALL = SyntheticConfig(num_train=20, num_val=6, height=48, width=96, seed=3)
TINY = SyntheticConfig(num_train=4, num_val=2, height=32, width=64, seed=1)
ID = {name: label_id for name, label_id, _ in SYNTH_CLASSES}
ALLOWED_IDS = {UNLABELED_ID, EGO_VEHICLE_ID} | set(ID.values())


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "ds", SMALL)


def _render_many(cfg: SyntheticConfig, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    items = [render_item(cfg, "train", i) for i in range(n)]
    return np.stack([im for im, _ in items]), np.stack([lab for _, lab in items])


def _label_files(root: Path) -> list[Path]:
    return sorted((root / "gtFine").glob("*/*/*_gtFine_labelIds.png"))


def test_classes_match_cityscapes() -> None:
    assert [c[0] for c in SYNTH_CLASSES] == [
        "road", "sidewalk", "building", "pole", "traffic sign", "vegetation", "sky", "person", "car",
    ]
    assert [c[1] for c in SYNTH_CLASSES] == [7, 8, 11, 17, 20, 21, 23, 24, 26]
    assert SYNTH_CLASSES[0][2] == (128, 64, 128) and SYNTH_CLASSES[-1][2] == (0, 0, 142)
    assert LABEL_ID_TO_TRAIN_ID[26] == 8 and LABEL_ID_TO_TRAIN_ID[0] == 255


def test_render_scene_shapes_and_determinism() -> None:
    a_img, a_lab = render_scene(np.random.default_rng(5), SMALL)
    b_img, b_lab = render_scene(np.random.default_rng(5), SMALL)
    c_img, _ = render_scene(np.random.default_rng(6), SMALL)
    assert a_img.shape == (48, 96, 3) and a_img.dtype == np.uint8
    assert a_lab.shape == (48, 96) and a_lab.dtype == np.uint8
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    assert not np.array_equal(a_img, c_img)


def test_items_pure_in_cfg_split_index() -> None:
    a = render_item(SMALL, "train", 7)
    b = render_item(SMALL, "train", 7)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert not np.array_equal(render_item(SMALL, "val", 7)[0], a[0])  # splits are disjoint
    other_seed = dataclasses.replace(SMALL, seed=4)
    assert not np.array_equal(render_item(other_seed, "train", 7)[0], a[0])


def test_generate_is_byte_identical(tmp_path: Path) -> None:
    r1, r2 = generate(tmp_path / "a", TINY), generate(tmp_path / "b", TINY)
    files = sorted(p.relative_to(r1) for p in r1.rglob("*.png"))
    assert len(files) == 2 * (TINY.num_train + TINY.num_val + TINY.num_tune)
    assert files == sorted(p.relative_to(r2) for p in r2.rglob("*.png"))
    assert all((r1 / f).read_bytes() == (r2 / f).read_bytes() for f in files)
    r3 = generate(tmp_path / "c", dataclasses.replace(TINY, seed=2))
    assert any((r1 / f).read_bytes() != (r3 / f).read_bytes() for f in files)


def test_torchvision_cityscapes_reads_layout(small_root: Path) -> None:
    from torchvision.datasets import Cityscapes

    for split, count in (("train", SMALL.num_train), ("val", SMALL.num_val)):
        ds = Cityscapes(str(small_root), split=split, mode="fine", target_type="semantic")
        assert len(ds) == count
        image, target = ds[0]
        assert image.size == (SMALL.width, SMALL.height) and image.mode == "RGB"
        assert target.size == image.size
    manifest = json.loads((small_root / "synthetic.json").read_text())
    assert manifest["format_version"] == synthetic.FORMAT_VERSION
    assert SyntheticConfig(**{f.name: manifest[f.name] for f in dataclasses.fields(SyntheticConfig)}) == SMALL


def test_label_values_and_class_presence(small_root: Path) -> None:
    labels = [np.asarray(Image.open(p)) for p in _label_files(small_root)]
    assert len(labels) == SMALL.num_train + SMALL.num_val + SMALL.num_tune
    seen = set().union(*(np.unique(lab).tolist() for lab in labels))
    assert seen <= ALLOWED_IDS
    assert set(ID.values()) <= seen  # every class appears somewhere
    assert seen & {UNLABELED_ID, EGO_VEHICLE_ID}  # some ignore pixels exist
    for name in ("pole", "traffic sign", "person"):
        presence = np.mean([(lab == ID[name]).any() for lab in labels])
        assert presence >= 0.5, (name, presence)


def test_position_prior_controls_layout() -> None:
    def sky_in_top_third(prior: float) -> float:
        _, labels = _render_many(dataclasses.replace(SMALL, position_prior=prior))
        sky = labels == ID["sky"]
        return float(sky[:, : SMALL.height // 3].sum() / sky.sum())

    strong, none = sky_in_top_third(1.0), sky_in_top_third(0.0)
    assert strong > 0.9
    assert none < 0.7


def test_appearance_overlap_pulls_confusable_colours_together() -> None:
    def road_sidewalk_distance(overlap: float) -> float:
        images, labels = _render_many(dataclasses.replace(SMALL, appearance_overlap=overlap), n=20)
        images = images.astype(np.float64)
        road = images[labels == ID["road"]].mean(0)
        sidewalk = images[labels == ID["sidewalk"]].mean(0)
        return float(np.linalg.norm(road - sidewalk))

    d0, d_half, d1 = (road_sidewalk_distance(o) for o in (0.0, 0.5, 1.0))
    assert d0 > d_half > d1
    assert d1 < 0.4 * d0


def test_ensure_generated_caches_and_regenerates(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    assert ensure_generated(root, TINY) == root
    manifest, png = root / "synthetic.json", _label_files(root)[0]
    stamps = (manifest.stat().st_mtime_ns, png.stat().st_mtime_ns)
    assert ensure_generated(root, TINY) == root
    assert (manifest.stat().st_mtime_ns, png.stat().st_mtime_ns) == stamps

    image = sorted((root / "leftImg8bit").rglob("*.png"))[0]
    before = image.read_bytes()
    ensure_generated(root, dataclasses.replace(TINY, seed=9))
    assert json.loads(manifest.read_text())["seed"] == 9
    assert image.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary leftovers


def test_ensure_generated_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = synthetic.render_item

    def flaky(cfg: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # an interrupted run
        return real(cfg, split, index)

    monkeypatch.setattr(synthetic, "render_item", flaky)
    with pytest.raises(KeyboardInterrupt):
        ensure_generated(tmp_path / "ds", TINY)
    assert list(tmp_path.iterdir()) == []  # nothing that could pass for a dataset
    monkeypatch.setattr(synthetic, "render_item", real)
    ensure_generated(tmp_path / "ds", TINY)
    assert (tmp_path / "ds" / "synthetic.json").exists()


def test_ensure_generated_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        ensure_generated(tmp_path, TINY)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(position_prior=2.5)
    with pytest.raises(ValueError):
        SyntheticConfig(appearance_overlap=-0.1)


def test_plot_samples(small_root: Path) -> None:
    fig = plot_samples(small_root, "val", n=3)
    assert len(fig.axes) == 6
    assert fig.legends and len(fig.legends[0].get_texts()) == len(SYNTH_CLASSES) + 1
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_generator_change_selects_new_data_teachers_and_runs(monkeypatch) -> None:
    run = get_profile("quick").run_config()
    before = (config_digest(TINY), run.digest())
    monkeypatch.setattr(config, "SYNTHETIC_VERSION", config.SYNTHETIC_VERSION + 1)
    after = (config_digest(TINY), run.digest())
    assert before[0] != after[0] and before[1] != after[1]


def test_loss_term_options_do_not_fork_baselines_or_teachers() -> None:
    profile = get_profile("quick")
    baseline, idd = profile.run_config("baseline"), profile.run_config("idd")
    cosine = {"loss.idd.metric": "cosine"}
    assert config.apply_overrides(baseline, cosine).digest() == baseline.digest()
    assert config.teacher_of(config.apply_overrides(idd, cosine)).digest() == profile.teacher_config().digest()
    assert config.apply_overrides(idd, cosine).digest() != idd.digest()
    assert config.apply_overrides(baseline, {"loss.aux_weight": "0.2"}).digest() != baseline.digest()
