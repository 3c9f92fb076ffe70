"""Tiny datasets in the real folder layouts (Cityscapes, VOC + SBD aug, ADE20K, generic folder),
32x64 images whose colour follows the label, for tests that read and train on them."""
from pathlib import Path

import numpy as np
from PIL import Image

from idd_lib.data.layouts import label_colormap

H, W = 32, 64


def _scene(values: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A label map of horizontal bands drawn from ``values`` (the last band ignored-ish) and an
    image whose colour depends on the band's value."""
    rng = np.random.default_rng(seed)
    label = np.zeros((H, W), dtype=np.uint8)
    bands = rng.choice(values, size=4)
    for i, v in enumerate(bands):
        label[i * H // 4:(i + 1) * H // 4] = v
    label[:, :3] = values[-1]
    wide = label.astype(np.int64)
    image = np.stack([(wide * 37) % 256, (wide * 91) % 256, (wide * 13) % 256], -1)
    image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
    return image, label


def make_cityscapes(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    values = [7, 8, 11, 21, 23, 26, 0]   # labelIds: road sidewalk building vegetation sky car, 0 unlabelled
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            image, label = _scene(values, seed=100 * (split == "val") + i)
            stem = f"city_{i:06d}_000019"
            (root / "leftImg8bit" / split / "city").mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / "city").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "leftImg8bit" / split / "city" / f"{stem}_leftImg8bit.png")
            Image.fromarray(label).save(root / "gtFine" / split / "city" / f"{stem}_gtFine_labelIds.png")
    return root


def make_voc(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    values = [0, 1, 7, 15, 20, 255]
    palette = [c for rgb in label_colormap(256) for c in rgb]
    ids = {"train": [f"2008_{i:06d}" for i in range(n_train)], "val": [f"2007_{i:06d}" for i in range(n_val)]}
    for split, names in ids.items():
        for i, name in enumerate(names):
            image, label = _scene(values, seed=200 + 10 * (split == "val") + i)
            Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
            Image.fromarray(label).save(base / "SegmentationClassAug" / f"{name}.png")   # grey indices (SBD aug)
            if split == "val":                                                         # VOC's palette PNGs
                mask = Image.fromarray(label, mode="P")
                mask.putpalette(palette)
                mask.save(base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(ids["train"]) + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids["val"]) + "\n")
    return root


def make_ade20k(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    root = root / "ADEChallengeData2016"
    values = [1, 2, 3, 13, 150, 0]            # stored: 1..150 classes, 0 = other (-> ignore)
    for split, folder, n in (("train", "training", n_train), ("val", "validation", n_val)):
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = _scene(values, seed=300 + 10 * (split == "val") + i)
            stem = f"ADE_{folder[:5]}_{i:08d}"
            Image.fromarray(image).save(root / "images" / folder / f"{stem}.jpg", quality=95)
            Image.fromarray(label).save(root / "annotations" / folder / f"{stem}.png")
    return root


def make_folder(root: Path, n_train: int = 4, n_val: int = 2, classes=("ground", "wall", "sky", "thing")) -> Path:
    values = [*range(len(classes)), 255]
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = _scene(values, seed=400 + 10 * (split == "val") + i)
            Image.fromarray(image).save(root / "images" / split / f"img{i}.png")
            Image.fromarray(label).save(root / "masks" / split / f"img{i}.png")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


MAKERS = {"cityscapes": make_cityscapes, "voc": make_voc, "ade20k": make_ade20k, "folder": make_folder}
