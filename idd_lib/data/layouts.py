"""Real datasets in their usual folder layouts ("bring your own folder"): class tables and listings.

Each listing returns the ``(image, label)`` file pairs of a split as an object shaped like
torchvision's :class:`~torchvision.datasets.Cityscapes` (``images``, ``targets`` with one target
per image), which :class:`~idd_lib.data.datasets.SegmentationDataset` reads; the label values go
through the spec's 256-entry lookup table (identity for VOC and the generic folder, ``0 -> 255,
k -> k-1`` for ADE20K's reduce-zero-label).

* ``voc``: ``data.root`` holds ``VOCdevkit/VOC2012`` (torchvision's layout). ``train`` is the
  SBD-augmented ``train_aug`` set: ids in ``ImageSets/Segmentation/train_aug.txt``, masks in
  ``SegmentationClassAug/`` (the DeepLab release); ``val`` is listed by torchvision's
  :class:`~torchvision.datasets.VOCSegmentation` (``SegmentationClass/``). 21 classes, 255 ignore.
* ``ade20k``: ``data.root`` is ``ADEChallengeData2016`` (``images/{training,validation}/*.jpg``,
  ``annotations/{training,validation}/*.png``); 150 classes, stored 0 = "other" -> ignore.
* ``folder``: ``data.root`` holds ``images/{train,val}/``, ``masks/{train,val}/*.png`` (same file
  stems; masks hold class indices, 255 ignore) and ``classes.txt`` (one name per line, line k =
  index k).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torchvision import datasets

from .validation import DatasetError

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")

# The 150 classes of the ADE20K scene-parsing benchmark (SceneParsing objectInfo150, mmseg's names)
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag")

# Short side that scale 1.0 means for data.scale_range (data.base_size overrides). Cityscapes'
# images are all 1024 high, so its ranges are the lineage's own-size factors (SKD 0.5-1.6, CIRKD
# 0.5-2.0); VOC/ADE20K images vary in size: the short side is rescaled around 512 as in mmseg's
# configs (img_scale (2048, 512), ratio 0.5-2.0) - CIRKD rescales each image by its own size.
BASE_SIZE = {"cityscapes": 1024, "voc": 512, "ade20k": 512, "folder": 512}
SPLIT_FOLDERS = {"ade20k": {"train": "training", "val": "validation"}}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def label_colormap(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map (bits of the index spread over R, G, B), for figures."""
    index = np.arange(n)
    rgb = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            rgb[:, channel] |= ((index >> (3 * shift + channel)) & 1) << (7 - shift)
    return tuple(tuple(int(v) for v in row) for row in rgb)


def read_class_names(root: str | Path) -> tuple[str, ...]:
    """``root/classes.txt`` of the generic folder format: one class name per line."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        raise DatasetError(f"{path}: missing; the folder format needs classes.txt with one class name per line "
                           "(line k names class index k in the masks)")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines shift nothing
        lines.pop()
    names = tuple(line.strip() for line in lines)
    if "" in names:
        raise DatasetError(f"{path}: line {names.index('') + 1} is blank; expected one class name per line "
                           "(line k names class index k, so a blank line would shift every later class)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetError(f"{path}: class name {repeated[0]!r} appears more than once; expected distinct names")
    if not 1 <= len(names) <= 255:
        raise DatasetError(f"{path}: {len(names)} class names; expected 1 to 255 (255 is the ignore index)")
    return names


@dataclass
class PairList:
    """Image/label file pairs, shaped like torchvision's Cityscapes listing (one target per image)."""
    images: list[str]
    targets: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _pairs_by_stem(image_dir: Path, label_dir: Path, label_suffix: str = ".png") -> PairList:
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: missing; expected a folder of {'labels' if folder == label_dir else 'images'}")
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in images:
                raise DatasetError(f"{path}: a second image for {images[path.stem].name}'s label; expected one "
                                   f"image per stem (keep {path.name} or {images[path.stem].name})")
            images[path.stem] = path
    labels = {p.name[:-len(label_suffix)]: p for p in label_dir.iterdir() if p.name.endswith(label_suffix)}
    if not images:
        raise DatasetError(f"{image_dir}: no images ({'/'.join(IMAGE_SUFFIXES)})")
    for stems, kind, other, folder in ((images.keys() - labels.keys(), "image without a label", "label", label_dir),
                                       (labels.keys() - images.keys(), "label without an image", "image", image_dir)):
        if stems:
            stem = sorted(stems)[0]
            path = images.get(stem) or labels[stem]
            raise DatasetError(f"{path}: {kind}; expected its {other} {folder / stem}"
                               f"{label_suffix if other == 'label' else '.*'} ({len(stems)} such file(s))")
    stems = sorted(images)
    return PairList([str(images[s]) for s in stems], [[str(labels[s])] for s in stems])


def _voc_base(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    if not base.is_dir():
        raise DatasetError(f"{base}: missing; data.root for voc must hold VOCdevkit/VOC2012 (torchvision's layout)")
    return base


def list_voc(root: str | Path, split: str) -> PairList:
    root = Path(root)
    base = _voc_base(root)
    if split == "train":
        ids_file, masks = base / "ImageSets" / "Segmentation" / "train_aug.txt", base / "SegmentationClassAug"
        for path in (ids_file, masks):
            if not path.exists():
                raise DatasetError(f"{path}: missing; the SBD-augmented training set (train_aug) needs train_aug.txt "
                                   "(one image id per line) and the SegmentationClassAug/ masks of the DeepLab "
                                   "release (10 582 images)")
        ids = [line.split()[0] for line in ids_file.read_text().splitlines() if line.strip()]
        pairs = PairList([str(base / "JPEGImages" / f"{i}.jpg") for i in ids], [[str(masks / f"{i}.png")] for i in ids])
        missing = [p for p in (*pairs.images, *(t[0] for t in pairs.targets)) if not Path(p).is_file()]
        if missing:
            raise DatasetError(f"{missing[0]}: listed in {ids_file} but missing ({len(missing)} file(s))")
        return pairs
    try:
        voc = datasets.VOCSegmentation(str(root), year="2012", image_set=split)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        raise DatasetError(f"{base}: cannot list the VOC {split} split ({err})") from None
    return PairList(list(voc.images), [[t] for t in voc.targets])


def list_ade20k(root: str | Path, split: str) -> PairList:
    folder = SPLIT_FOLDERS["ade20k"].get(split, split)
    return _pairs_by_stem(Path(root) / "images" / folder, Path(root) / "annotations" / folder)


def list_folder(root: str | Path, split: str) -> PairList:
    read_class_names(root)
    return _pairs_by_stem(Path(root) / "images" / split, Path(root) / "masks" / split)


def check_root(root: str | Path, dataset: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data.root: {root} {'is not a folder' if root.exists() else 'does not exist'}; "
                           f"expected the {dataset} folder")
    return root


LISTINGS = {"voc": list_voc, "ade20k": list_ade20k, "folder": list_folder}


def list_split(dataset: str, root: str | Path, split: str) -> PairList:
    """The ``(image, label)`` pairs of ``split`` (train | val) of a non-Cityscapes layout."""
    return LISTINGS[dataset](check_root(root, dataset), split)
