"""Checks of a dataset folder and of each sample, with one-line errors naming the file.

Two levels, both cheap: :func:`check_cityscapes_split` lists file *names* once per dataset
construction (before torchvision's loader, whose own error is a vague ``RuntimeError``), and
:func:`read_sample` decodes one image/label pair when it is loaded, checking that it decodes,
that both have the same size and that every stored label value is an id the dataset knows.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import IGNORE_INDEX

if TYPE_CHECKING:
    from .datasets import DatasetSpec

# What PIL raises on a file it cannot identify or decode: UnidentifiedImageError and "image file
# is truncated" are OSErrors, a broken PNG chunk is a SyntaxError, some bad headers a ValueError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError)


class DatasetError(ValueError):
    """A dataset folder or file that does not hold what the loader expects."""


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _listing(split_dir: Path, suffix: str, strict: bool) -> dict[tuple[str, str], Path]:
    """``(city, stem) -> file`` for ``split_dir/<city>/<stem><suffix>``; ``strict``: any other
    entry is an error (torchvision's loader would take it for an image)."""
    found = {}
    for city in sorted(split_dir.iterdir()):
        if not city.is_dir():
            if strict:
                raise DatasetError(f"{city}: unexpected file; expected only <city>/ folders in {split_dir}")
            continue
        for path in _files(city):
            if path.name.endswith(suffix):
                found[city.name, path.name[:-len(suffix)]] = path
            elif strict:
                raise DatasetError(f"{path}: unexpected file in an image folder; expected only *{suffix} files")
    return found


def check_cityscapes_split(root: str | Path, split: str, images: str = "leftImg8bit", labels: str = "gtFine",
                           image_suffix: str = "_leftImg8bit.png",
                           label_suffix: str = "_gtFine_labelIds.png") -> int:
    """Check the Cityscapes layout of ``split`` under ``root`` from file names only; returns the
    number of image/label pairs. Raises :class:`DatasetError` naming the first offending path."""
    return len(cityscapes_pairs(root, split, images, labels, image_suffix, label_suffix))


def cityscapes_pairs(root: str | Path, split: str, images: str = "leftImg8bit", labels: str = "gtFine",
                     image_suffix: str = "_leftImg8bit.png",
                     label_suffix: str = "_gtFine_labelIds.png") -> list[tuple[Path, Path]]:
    """The checked ``(image, label)`` files of a Cityscapes-layout ``split``, in (city, stem) order.
    Any split name (the synthetic benchmark's ``tune``, which torchvision's loader refuses) is
    listed; a missing or inconsistent folder raises :class:`DatasetError` naming the first path."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"data.root: {root} {what}; expected a folder holding {images}/ and {labels}/ "
                           "(the Cityscapes layout)")
    image_dir, label_dir = root / images / split, root / labels / split
    for folder, suffix in ((image_dir, image_suffix), (label_dir, label_suffix)):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: missing; expected the {split} split as "
                               f"{folder.relative_to(root)}/<city>/*{suffix}")
    image_files = _listing(image_dir, image_suffix, strict=True)
    label_files = _listing(label_dir, label_suffix, strict=False)
    if not image_files:
        raise DatasetError(f"{image_dir}: no images (<city>/*{image_suffix}) in the {split} split")
    unlabelled = sorted(image_files.keys() - label_files.keys())
    if unlabelled:
        city, stem = unlabelled[0]
        raise DatasetError(f"{image_files[city, stem]}: image without a label; expected "
                           f"{label_dir / city / (stem + label_suffix)} ({len(unlabelled)} image(s) lack a label)")
    orphans = sorted(label_files.keys() - image_files.keys())
    if orphans:
        city, stem = orphans[0]
        raise DatasetError(f"{label_files[city, stem]}: label without an image; expected "
                           f"{image_dir / city / (stem + image_suffix)} ({len(orphans)} label(s) lack an image)")
    return [(image_files[key], label_files[key]) for key in sorted(image_files)]


def legal_label_values(spec: DatasetSpec) -> np.ndarray | None:
    """``bool[256]``: the stored values a label file of ``spec`` may hold (ids mapped to a class,
    the dataset's declared void ids, and 255); None when the spec declares no void ids (unchecked)."""
    if spec.void_ids is None:
        return None
    legal = spec.lookup() != IGNORE_INDEX
    legal[list(spec.void_ids)] = True
    legal[IGNORE_INDEX] = True
    return legal


def _ranges(values: np.ndarray) -> str:
    """``[0, 1, 2, 3, 7, 255]`` -> ``"0-3, 7, 255"``."""
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def _decode(path: str | Path, what: str) -> Image.Image:
    try:
        with open(path, "rb") as handle:  # closed on a decoding error too
            image = Image.open(handle)
            image.load()  # decode now, while the file is open
        return image
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} file is missing") from None
    except _DECODE_ERRORS as err:
        raise DatasetError(f"{path}: cannot decode the {what} ({type(err).__name__}: {err}); the file is corrupt "
                           "or truncated: replace it (a generated synthetic set is rebuilt by deleting its "
                           "folder)") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file is missing") from None
    except _DECODE_ERRORS as err:
        raise DatasetError(f"{path}: cannot read the image header ({type(err).__name__}: {err})") from None


def read_label(path: str | Path) -> np.ndarray:
    """The stored values of one label file as ``H x W`` uint8 (one channel, 8-bit ids checked)."""
    return _label_ids(_decode(path, "label"), path)


def _label_ids(label: Image.Image, path: str | Path) -> np.ndarray:
    raw = np.array(label)
    if raw.ndim != 2:
        raise DatasetError(f"{path}: label image has mode {label.mode}; expected one channel of label ids "
                           "(a colour-coded label?)")
    if raw.dtype != np.uint8:
        lo, hi = int(raw.min()), int(raw.max())
        if lo < 0 or hi > 255:
            raise DatasetError(f"{path}: label values range {lo}..{hi}; expected 8-bit label ids 0..255")
        raw = raw.astype(np.uint8)
    return raw


def read_sample(image_path: str | Path, label_path: str | Path,
                legal: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair into ``H x W x 3`` uint8 RGB and ``H x W`` uint8 stored label values,
    checking sizes and (when ``legal`` is given, see :func:`legal_label_values`) label values."""
    image, label = _decode(image_path, "image"), _decode(label_path, "label")
    if image.size != label.size:
        raise DatasetError(f"{image_path} is {image.size[0]}x{image.size[1]} but its label {label_path} is "
                           f"{label.size[0]}x{label.size[1]}; expected the same size")
    raw = _label_ids(label, label_path)
    if legal is not None:
        # one pass over the pixels: a histogram of the 256 possible values
        present = np.bincount(raw.ravel(), minlength=256) > 0
        bad = np.flatnonzero(present & ~legal)
        if bad.size:
            raise DatasetError(f"{label_path}: label values {bad.tolist()} are not label ids of this dataset; "
                               f"expected {_ranges(np.flatnonzero(legal))} (255 = ignore)")
    return np.array(image.convert("RGB")), raw
