"""Real datasets, bring your own folder: each layout read, mapped and trained on from a tiny fixture."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from idd_lib import runs
from idd_lib.config import DataConfig
from idd_lib.data import datasets, layouts
from idd_lib.data.validation import DatasetError
from layout_fixtures import H, W, MAKERS, make_ade20k, make_folder, make_voc


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(dataset, root, **kw):
    return DataConfig(dataset=dataset, root=str(root), crop_size=(32, 32), base_size=32, batch_size=2,
                      eval_batch_size=1, **kw)


@pytest.mark.parametrize("dataset, classes", [("cityscapes", 19), ("voc", 21), ("ade20k", 150), ("folder", 4)])
def test_each_layout_lists_splits_and_maps_labels_to_class_indices(dataset, classes, tmp_path):
    root = MAKERS[dataset](tmp_path)
    cfg = _cfg(dataset, root)
    spec = datasets.dataset_spec(cfg)
    assert spec.num_classes == classes == len(spec.palette) and len(set(spec.class_names)) == classes
    train, val = datasets.build_dataset(cfg, "train", train=True), datasets.build_dataset(cfg, "val", train=False)
    assert (len(train), len(val)) == (4, 2)
    image, mask = val[0]
    assert image.shape == (3, H, W) and mask.shape == (H, W) and mask.dtype == torch.long
    raw = np.array(Image.open(val.base.targets[0][0]))
    expected = spec.lookup()[raw]                       # the stored values through the spec's table
    assert torch.equal(mask, torch.from_numpy(expected.astype(np.int64)))
    values = set(mask.unique().tolist())
    assert values <= set(range(classes)) | {255} and len(values - {255}) >= 2
    image, mask = train[(1, 3)]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)


def test_ade20k_reduces_zero_label_and_voc_keeps_indices(tmp_path):
    ade = datasets.ade20k_spec().lookup()
    assert ade[0] == 255 and ade[1] == 0 and ade[150] == 149 and ade[151] == 255
    assert len(layouts.ADE20K_CLASSES) == 150 and layouts.ADE20K_CLASSES[0] == "wall"
    voc = datasets.voc_spec().lookup()
    assert list(voc[:21]) == list(range(21)) and voc[255] == 255 and voc[21] == 255
    assert datasets.voc_spec().class_names[15] == "person"
    # VOC val masks are palette PNGs read as indices; train_aug comes from SegmentationClassAug
    root = make_voc(tmp_path)
    val = datasets.build_dataset(_cfg("voc", root), "val", train=False)
    assert "SegmentationClass/" in val.base.targets[0][0]
    assert Image.open(val.base.targets[0][0]).mode == "P"
    train = datasets.build_dataset(_cfg("voc", root), "train", train=False)
    assert all("SegmentationClassAug" in t[0] for t in train.base.targets)


def test_folder_format_reads_classes_file_and_rejects_bad_folders(tmp_path):
    root = make_folder(tmp_path / "ok", classes=("a", "b", "c"))
    assert datasets.dataset_spec(_cfg("folder", root)).class_names == ("a", "b", "c")
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="classes.txt: missing"):
        datasets.dataset_spec(_cfg("folder", root))
    root = make_folder(tmp_path / "orphan")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images" / "train" / "extra.png")
    with pytest.raises(DatasetError, match="extra.png: image without a label"):
        datasets.build_dataset(_cfg("folder", root), "train", train=True)


def test_missing_sbd_list_and_missing_folders_are_clear_errors(tmp_path):
    root = make_voc(tmp_path / "voc")
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").unlink()
    with pytest.raises(DatasetError, match="train_aug.txt: missing; the SBD-augmented"):
        datasets.build_dataset(_cfg("voc", root), "train", train=True)
    with pytest.raises(DatasetError, match="VOCdevkit/VOC2012: missing"):
        datasets.build_dataset(_cfg("voc", tmp_path / "voc" / "VOCdevkit"), "val", train=False)
    ade = make_ade20k(tmp_path / "ade")
    with pytest.raises(DatasetError, match="images/nowhere: missing"):
        datasets.build_dataset(_cfg("ade20k", ade), "nowhere", train=False)
    with pytest.raises(ValueError, match="data.dataset: unknown dataset 'coco'"):
        datasets.dataset_spec(DataConfig(dataset="coco"))


def test_ade20k_label_outside_the_150_classes_is_reported(tmp_path):
    root = make_ade20k(tmp_path)
    path = sorted((root / "annotations" / "validation").iterdir())[0]
    label = np.array(Image.open(path))
    label[0, 0] = 200
    Image.fromarray(label).save(path)
    val = datasets.build_dataset(_cfg("ade20k", root), "val", train=False)
    with pytest.raises(DatasetError, match=r"label values \[200\]"):
        val[0]


@pytest.mark.parametrize("dataset", sorted(MAKERS))
def test_two_training_steps_on_each_layout(dataset, tiny_profile, tmp_path):
    root = MAKERS[dataset](tmp_path)
    profile = dataclasses.replace(
        tiny_profile, name=f"tiny-{dataset}", data=_cfg(dataset, root),
        teacher_train=dataclasses.replace(tiny_profile.teacher_train, iterations=2),
        student_train=dataclasses.replace(tiny_profile.student_train, iterations=2, log_every=1))
    result = runs.run_student(profile, "kd", seed=0, progress=False)
    assert result["steps"] == 2 and len(result["per_class_iou"]) == datasets.dataset_spec(profile.data).num_classes
    rows = [r for r in runs.read_metrics(result["run_dir"]) if "loss/total" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss/kd"]) for r in rows)
