import numpy as np
import pytest
import torch

from idd_lib.config import DataConfig
from idd_lib.data import datasets
from idd_lib.data.synthetic import SYNTH_CLASSES, SyntheticConfig

CFG = DataConfig(synthetic=SyntheticConfig(num_train=8, num_val=4, height=32, width=64), batch_size=4)


def test_synthetic_read_back_through_cityscapes_loader_with_train_ids():
    train = datasets.build_dataset(CFG, "train", train=True)
    val = datasets.build_dataset(CFG, "val", train=False)
    assert len(train) == 8 and len(val) == 4
    assert train.base.__class__.__name__ == "Cityscapes"
    image, mask = val[0]
    assert image.shape == (3, 32, 64) and image.dtype == torch.float32
    assert mask.shape == (32, 64) and mask.dtype == torch.long
    values = set(torch.cat([val[i][1].flatten() for i in range(4)]).unique().tolist())
    assert values <= set(range(len(SYNTH_CLASSES))) | {255}
    assert len(values - {255}) >= 6


def test_label_ids_map_to_train_ids():
    spec = datasets.synthetic_spec()
    lut = spec.lookup()
    assert spec.num_classes == 9 and spec.class_names[0] == "road"
    assert lut[7] == 0 and lut[26] == 8 and lut[0] == 255 and lut[1] == 255
    city = datasets.cityscapes_spec()
    assert city.num_classes == 19 and city.lookup()[7] == 0 and city.lookup()[33] == 18 and city.lookup()[0] == 255


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    train = datasets.build_dataset(CFG, "train", train=True, seed=3)
    a, b = train[(2, 5)], train[(2, 5)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(123)  # global RNG state must not matter
    c = train[(2, 5)]
    assert torch.equal(a[0], c[0])
    assert not all(torch.equal(train[(2, e)][0], a[0]) for e in range(6, 10))
    # image and mask are transformed jointly: ignore padding only where the image was padded
    image, mask = train[(2, 7)]
    assert image.shape[-2:] == mask.shape == (32, 64)


def test_sampler_resumes_with_the_same_batches():
    full = list(datasets.EpochBatchSampler(10, 4, total_steps=7, seed=1))
    resumed = list(datasets.EpochBatchSampler(10, 4, total_steps=7, seed=1, start_step=4))
    assert resumed == full[4:]
    assert len(full) == 7 and all(len(b) == 4 for b in full)
    epoch0 = [i for batch in full[:2] for i, e in batch]
    assert len(set(epoch0)) == 8  # no repeats inside an epoch


def test_batch_larger_than_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="data.batch_size: 16 is larger than the training set"):
        datasets.EpochBatchSampler(8, 16, total_steps=2, seed=0)


def test_unknown_dataset_and_missing_root_are_clear_errors():
    with pytest.raises(ValueError, match="data.dataset: unknown dataset 'kitti'"):
        datasets.dataset_spec(DataConfig(dataset="kitti"))
    with pytest.raises(ValueError, match="data.root"):
        datasets.dataset_root(DataConfig(dataset="cityscapes"))


def test_tune_split_is_listed_disjoint_from_val_and_train(tmp_path):
    """torchvision's Cityscapes refuses split 'tune': the dataset lists it itself, same layout."""
    from idd_lib.config import DataConfig
    from idd_lib.data.datasets import build_dataset
    from idd_lib.data.synthetic import SPLIT_CITIES, SyntheticConfig
    data = DataConfig(synthetic=SyntheticConfig(num_train=4, num_val=3, num_tune=5, height=32, width=64))
    tune, val = build_dataset(data, "tune", train=False), build_dataset(data, "val", train=False)
    assert len(tune) == 5 and len(val) == 3
    assert all(f"/{SPLIT_CITIES['tune']}/" in path for path in tune.base.images)
    image, mask = tune[0]
    assert image.shape[-2:] == mask.shape[-2:] == (32, 64)
    stems = lambda ds: {p.rsplit("/", 1)[-1] for p in ds.base.images}  # noqa: E731
    assert not stems(tune) & stems(val) and not stems(tune) & stems(build_dataset(data, "train", train=False))
