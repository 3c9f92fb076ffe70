"""Bad inputs give one clear error naming the file or parameter and what was expected (issue 6).

Each test breaks one thing in an otherwise valid input and checks the error; without the check
the input would load silently, or fail with a library's message that names neither."""
import dataclasses
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idd_lib import engine, runs, study
from idd_lib.config import DataConfig, ModelConfig
from idd_lib.presets import get_profile
from idd_lib.data import datasets
from idd_lib.data.synthetic import SPLIT_CITIES, SyntheticConfig, generate
from idd_lib.data.validation import DatasetError
from idd_lib.models import build_segmentor

CITY = SPLIT_CITIES["val"]


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("city"), SyntheticConfig(num_train=2, num_val=3, height=16, width=32))


@pytest.fixture
def root(clean_root, tmp_path) -> Path:
    """A private copy of a valid Cityscapes-layout folder, for the test to break."""
    import shutil
    return Path(shutil.copytree(clean_root, tmp_path / "cityscapes"))


def image_file(root: Path, i: int = 0) -> Path:
    return root / "leftImg8bit" / "val" / CITY / f"{CITY}_{i:06d}_000019_leftImg8bit.png"


def label_file(root: Path, i: int = 0) -> Path:
    return root / "gtFine" / "val" / CITY / f"{CITY}_{i:06d}_000019_gtFine_labelIds.png"


def cityscapes(root: Path, split: str = "val"):
    return datasets.build_dataset(DataConfig(dataset="cityscapes", root=str(root)), split, train=False)


def synthetic(root: Path, split: str = "val"):
    return datasets.SegmentationDataset(root, split, datasets.synthetic_spec(), datasets.eval_transform())


def test_valid_folder_loads_with_both_specs(root):
    for dataset in (cityscapes(root), synthetic(root)):
        assert len(dataset) == 3
        image, mask = dataset[2]
        assert image.shape == (3, 16, 32) and mask.shape == (16, 32)


def test_missing_root_names_the_folder():
    with pytest.raises(DatasetError, match=r"data.root: /no/such/cityscapes does not exist; expected a folder "
                                           r"holding leftImg8bit/ and gtFine/"):
        cityscapes(Path("/no/such/cityscapes"))


def test_missing_split_folder_names_it(root):
    import shutil
    shutil.rmtree(root / "gtFine" / "val")
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'gtFine' / 'val'}: missing; expected the val split")):
        cityscapes(root)


def test_empty_split_names_the_folder(root):
    for path in (root / "leftImg8bit" / "val" / CITY).iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'leftImg8bit' / 'val'}: no images")):
        cityscapes(root)


def test_image_without_label_names_both_files(root):
    label_file(root, 1).unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{image_file(root, 1)}: image without a label; expected "
                                                     f"{label_file(root, 1)} (1 image(s) lack a label)")):
        cityscapes(root)


def test_label_without_image_names_both_files(root):
    image_file(root, 2).unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{label_file(root, 2)}: label without an image; expected "
                                                     f"{image_file(root, 2)}")):
        cityscapes(root)


def test_stray_file_in_an_image_folder_is_named(root):
    stray = image_file(root).with_name("notes.txt")
    stray.write_text("x")
    with pytest.raises(DatasetError, match=re.escape(f"{stray}: unexpected file")):
        cityscapes(root)


def test_image_and_label_of_different_sizes_name_both(root):
    Image.new("L", (16, 8), 7).save(label_file(root, 1))
    dataset = cityscapes(root)
    dataset[0]  # the listing check does not decode: only the broken sample fails, when loaded
    with pytest.raises(DatasetError, match=re.escape(f"{image_file(root, 1)} is 32x16 but its label "
                                                     f"{label_file(root, 1)} is 16x8; expected the same size")):
        dataset[1]


def test_label_values_outside_the_dataset_ids_name_file_and_values(root):
    raw = np.array(Image.open(label_file(root)))
    raw[0, :3] = (2, 40, 255)  # 2: a Cityscapes void id (not a synthetic one); 40: no dataset's id; 255: ignore
    Image.fromarray(raw).save(label_file(root))
    with pytest.raises(DatasetError, match=re.escape(f"{label_file(root)}: label values [2, 40] are not label ids "
                                                     "of this dataset; expected 0-1, 7-8, 11, 17, 20-21, 23-24, 26, "
                                                     "255 (255 = ignore)")):
        synthetic(root)[0]
    with pytest.raises(DatasetError, match=re.escape(f"{label_file(root)}: label values [40] are not label ids "
                                                     "of this dataset; expected 0-33, 255")):
        cityscapes(root)[0]
    raw[0, 1] = 33  # bicycle: legal in Cityscapes, where it maps to its trainId
    Image.fromarray(raw).save(label_file(root))
    assert cityscapes(root)[0][1][0, 1] == 18


def test_colour_and_16_bit_labels_are_named(root):
    Image.new("RGB", (32, 16), (128, 64, 128)).save(label_file(root))
    with pytest.raises(DatasetError, match=re.escape(f"{label_file(root)}: label image has mode RGB; expected one "
                                                     "channel of label ids")):
        cityscapes(root)[0]
    Image.fromarray(np.full((16, 32), 7000, np.uint16)).save(label_file(root))
    with pytest.raises(DatasetError, match=re.escape(f"{label_file(root)}: label values range 7000..7000")):
        cityscapes(root)[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_image_is_named(root, damage):
    path = image_file(root, 1)
    data = path.read_bytes()
    path.write_bytes(b"not a png at all" if damage == "garbage" else data[:len(data) // 2])
    dataset = cityscapes(root)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: cannot decode the image (") + ".*corrupt or truncated"):
        dataset[1]
    truncated_label = label_file(root, 2)
    truncated_label.write_bytes(truncated_label.read_bytes()[:60])
    with pytest.raises(DatasetError, match=re.escape(f"{truncated_label}: cannot decode the label")):
        dataset[2]


def test_dataset_errors_surface_through_training(root, tiny_profile, tmp_path):
    city = SPLIT_CITIES["train"]
    train_label = root / "gtFine" / "train" / city / f"{city}_000001_000019_gtFine_labelIds.png"
    raw = np.array(Image.open(train_label))
    raw[5, 5] = 99
    Image.fromarray(raw).save(train_label)
    cfg = tiny_profile.run_config("baseline", 0)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset="cityscapes", root=str(root),
                                                            crop_size=(16, 32), batch_size=2))
    with pytest.raises(DatasetError, match=re.escape(f"{train_label}: label values [99]")):
        engine.train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --- checkpoints, methods, options, weights, profiles, notebook parameters -------------------------

def test_teacher_checkpoint_of_another_architecture_is_a_clear_error(tiny_profile, tmp_path):
    cfg = tiny_profile.teacher_config()
    other = ModelConfig(layers=(1, 1, 1, 1), width=0.25, head="aspp", head_channels=32)
    torch.save(build_segmentor(other, 9).state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'model.pt'}: checkpoint does not match the "
                                                   "configured architecture with 9 classes")):
        engine.load_model(tmp_path, cfg)
    torch.save(build_segmentor(cfg.model, 19).state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match="with 9 classes .*size mismatch"):
        engine.load_model(tmp_path, cfg)


class _Payload:
    """A pickle that would create a file when unpickled without ``weights_only``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_checkpoint_holding_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"model": _Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        engine.load_state(tmp_path / "model.pt")
    assert not marker.exists()


def test_unknown_method_option_and_weights_fail_before_any_work(tiny_profile):
    with pytest.raises(ValueError, match=r"method: unknown method 'idd-pid'; expected one of \["):
        runs.run_student(tiny_profile, "idd-pid", progress=False)
    with pytest.raises(ValueError, match=r"options: unknown option 'loss.idd.metrc'; IDDConfig has \["):
        runs.run_student(tiny_profile, "idd", options={"loss.idd.metrc": "cosine"}, progress=False)
    with pytest.raises(ValueError, match=r"options: train.lr expects a number, got 'fast'"):
        runs.run_student(tiny_profile, "idd", options={"train.lr": "fast"}, progress=False)
    with pytest.raises(ValueError, match=r"weights: unknown loss term 'idd2'"):
        runs.run_student(tiny_profile, "idd", weights={"idd2": 1.0}, progress=False)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"weights: idd must be a finite number >= 0"):
            runs.run_student(tiny_profile, "idd", weights={"idd": bad}, progress=False)
    assert not any(Path(os.environ["IDD_RESULTS"]).rglob("*.json"))  # nothing was trained or written


def test_bad_ablation_grid_entries_fail_before_the_first_run():
    profile = get_profile("quick")
    with pytest.raises(ValueError, match=r"weights: kd=-1 must be a finite number >= 0"):
        study.ablation_grid(profile, methods="baseline", variants="kd|kd=-1|")
    with pytest.raises(ValueError, match=r"variants: expected 'method\|weights\|options', got 'idd\|idd=1'"):
        study.ablation_grid(profile, variants="idd|idd=1")
    with pytest.raises(ValueError, match=r"method: unknown method 'ID'"):
        study.ablation_grid(profile, methods="baseline,ID")
    with pytest.raises(ValueError, match=r"seeds: expected comma-separated integers, got '0,one'"):
        study.ablation_grid(profile, seeds="0,one")


def test_unknown_profile_is_a_clear_error_from_every_entry_point(capsys):
    with pytest.raises(ValueError, match=r"profile: unknown profile 'quik'; expected one of \["):
        runs.run_student("quik", "baseline", progress=False)
    assert study.main(["--profile", "quik"]) == 1
    assert "error: profile: unknown profile 'quik'" in capsys.readouterr().err
