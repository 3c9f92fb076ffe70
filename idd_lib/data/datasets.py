"""Datasets read through torchvision's Cityscapes loader, with joint v2 augmentation.

The embedded synthetic benchmark is written in the Cityscapes layout and read back through the
same :class:`torchvision.datasets.Cityscapes` path as real Cityscapes; only the labelId ->
trainId table differs (:class:`DatasetSpec`).

Augmentation is a pure function of ``(seed, epoch, index)``: the sampler hands the dataset
``(index, epoch)`` keys, and each sample seeds its own RNG. Runs are therefore reproducible
whatever the number of workers, and a resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2

from ..config import DataConfig
from ..paths import cache_root
from . import IGNORE_INDEX, layouts, validation
from .synthetic import EGO_VEHICLE_ID, SYNTH_CLASSES, UNLABELED_ID, ensure_generated

IMAGENET_MEAN = (0.485, 0.456, 0.406)
# the splits torchvision's Cityscapes loader accepts (mode fine); others are listed by validation.cityscapes_pairs
TORCHVISION_CITYSCAPES_SPLITS = ("train", "val", "test")
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    id_to_train_id: tuple[int, ...]   # 256-entry lookup table from stored label value to class index
    void_ids: tuple[int, ...] | None = None  # stored ids that legally mean "unlabelled"; None: values unchecked

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def lookup(self) -> np.ndarray:
        return np.asarray(self.id_to_train_id, dtype=np.uint8)


def _lookup(pairs: dict[int, int]) -> tuple[int, ...]:
    table = [IGNORE_INDEX] * 256
    for label_id, train_id in pairs.items():
        table[label_id] = train_id
    return tuple(table)


def synthetic_spec() -> DatasetSpec:
    return DatasetSpec("synthetic", tuple(c[0] for c in SYNTH_CLASSES), tuple(c[2] for c in SYNTH_CLASSES),
                       _lookup({c[1]: k for k, c in enumerate(SYNTH_CLASSES)}), (UNLABELED_ID, EGO_VEHICLE_ID))


def cityscapes_spec() -> DatasetSpec:
    train = sorted((c for c in datasets.Cityscapes.classes if not c.ignore_in_eval), key=lambda c: c.train_id)
    return DatasetSpec("cityscapes", tuple(c.name for c in train), tuple(c.color for c in train),
                       _lookup({c.id: c.train_id for c in train}),
                       tuple(c.id for c in datasets.Cityscapes.classes if c.ignore_in_eval and c.id >= 0))


def voc_spec() -> DatasetSpec:
    """Pascal VOC 2012 (+SBD): masks hold the class index 0-20, 255 = boundary/ignore."""
    names = layouts.VOC_CLASSES
    return DatasetSpec("voc", names, layouts.label_colormap(len(names)), _lookup({k: k for k in range(len(names))}), ())


def ade20k_spec() -> DatasetSpec:
    """ADE20K SceneParsing, reduce-zero-label: stored 0 ("other") -> ignore, k -> k - 1."""
    names = layouts.ADE20K_CLASSES
    return DatasetSpec("ade20k", names, layouts.label_colormap(len(names) + 1)[1:],
                       _lookup({k + 1: k for k in range(len(names))}), (0,))


def folder_spec(root: str | Path) -> DatasetSpec:
    """The generic images/ + masks/ format: classes from ``root/classes.txt``, masks hold indices."""
    names = layouts.read_class_names(root)
    return DatasetSpec("folder", names, layouts.label_colormap(len(names)), _lookup({k: k for k in range(len(names))}), ())


def dataset_spec(cfg: DataConfig) -> DatasetSpec:
    specs = {"synthetic": synthetic_spec, "cityscapes": cityscapes_spec, "voc": voc_spec, "ade20k": ade20k_spec,
             "folder": lambda: folder_spec(dataset_root(cfg))}
    if cfg.dataset not in specs:
        raise ValueError(f"data.dataset: unknown dataset {cfg.dataset!r}; expected one of {sorted(specs)}")
    return specs[cfg.dataset]()


def dataset_root(cfg: DataConfig) -> Path:
    """The folder to read; for the synthetic set, generated on first use (cached by its config)."""
    if cfg.dataset == "synthetic" and not cfg.root:
        from ..config import config_digest
        return ensure_generated(cache_root() / "data" / f"synthetic-{config_digest(cfg.synthetic)}", cfg.synthetic)
    if not cfg.root:
        raise ValueError(f"data.root: the {cfg.dataset} dataset needs a folder; set data.root=/path/to/{cfg.dataset}")
    return Path(cfg.root)


def train_transform(cfg: DataConfig, base_short_side: int, crop_size: tuple[int, int]) -> v2.Transform:
    lo, hi = cfg.scale_range
    steps: list[v2.Transform] = [
        v2.RandomResize(int(base_short_side * lo), int(base_short_side * hi) + 1),
        v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
    ]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform() -> v2.Transform:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class SegmentationDataset(Dataset):
    """(image, label) file pairs -> (normalised image, class-index mask) through the spec's table.

    The pairs come from torchvision's Cityscapes (fine, semantic labelIds; also the synthetic
    benchmark) or from :mod:`.layouts` (VOC + SBD aug, ADE20K, generic folder).

    Keys are ``index`` or ``(index, epoch)``; the augmentation RNG is seeded from
    ``(seed, epoch, index)``.
    """

    def __init__(self, root: Path, split: str, spec: DatasetSpec, transform: v2.Transform, seed: int = 0,
                 eval_batch_size: int = DataConfig.eval_batch_size, num_workers: int = 0):
        self.root, self.split, self.spec, self.transform, self.seed = Path(root), split, spec, transform, seed
        # how the dataset is read for evaluation and analysis (data.eval_batch_size, data.num_workers)
        self.eval_batch_size, self.num_workers = eval_batch_size, num_workers
        if spec.name in ("synthetic", "cityscapes") and split not in TORCHVISION_CITYSCAPES_SPLITS:
            # the held-out tune split: same layout, a split name torchvision's loader refuses
            pairs = validation.cityscapes_pairs(root, split)
            self.base = layouts.PairList([str(i) for i, _ in pairs], [[str(t)] for _, t in pairs])
        elif spec.name in ("synthetic", "cityscapes"):
            validation.check_cityscapes_split(root, split)  # names the missing folder/file, unlike torchvision
            self.base = datasets.Cityscapes(str(root), split=split, mode="fine", target_type="semantic")
        else:  # VOC, ADE20K, generic folder: same (images, targets) listing shape (data.layouts)
            self.base = layouts.list_split(spec.name, root, split)
        # os.listdir order is arbitrary; index -> file must be stable for seeded augmentation and resume
        pairs = sorted(zip(self.base.images, self.base.targets))
        self.base.images, self.base.targets = [p[0] for p in pairs], [p[1] for p in pairs]
        self._lookup = torch.from_numpy(spec.lookup().astype(np.int64))
        self._legal = validation.legal_label_values(spec)

    def __len__(self) -> int:
        return len(self.base)

    def require_labels(self) -> None:
        """Raise naming the split when no label file holds a pixel of a class (all void or ignore):
        training on it gives NaN losses and evaluating it an undefined mIoU. Files are read until
        the first labelled one, so a usual split costs one file."""
        lookup = self.spec.lookup()
        if any((lookup[validation.read_label(target[0])] != IGNORE_INDEX).any() for target in self.base.targets):
            return
        raise validation.DatasetError(
            f"{self.root} ({self.split} split): none of its {len(self)} label files holds a pixel of a class "
            f"(every value is void or 255); expected label ids of the {self.spec.name} classes")

    def require_one_size(self) -> None:
        """Raise when images of several sizes would be stacked into one evaluation batch (image
        headers only are read), naming the setting that evaluates them one at a time."""
        if self.eval_batch_size == 1:
            return
        sizes = sorted({validation.image_size(path) for path in self.base.images})
        if len(sizes) > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sizes[:3])
            raise validation.DatasetError(
                f"data.eval_batch_size: the {self.split} images of {self.root} have {len(sizes)} sizes ({shown}"
                f"{', ...' if len(sizes) > 3 else ''}); set data.eval_batch_size=1 to evaluate them one at a time")

    def __getitem__(self, key: int | tuple[int, int]):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        # decoded here rather than by self.base[index], so a bad file is reported by name
        image, raw = validation.read_sample(self.base.images[index], self.base.targets[index][0], self._legal)
        image = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        mask = tv_tensors.Mask(self._lookup[torch.from_numpy(raw).long()])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + index)
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


def build_dataset(cfg: DataConfig, split: str, train: bool, seed: int = 0) -> SegmentationDataset:
    root = dataset_root(cfg)
    spec = dataset_spec(cfg)
    if cfg.dataset == "synthetic":
        size = (cfg.synthetic.height, cfg.synthetic.width)
        crop, short = cfg.crop_size or size, cfg.base_size or min(size)
    else:
        if train and cfg.crop_size is None:
            raise ValueError("data.crop_size: real datasets need a training crop, e.g. data.crop_size=512 1024")
        crop, short = cfg.crop_size or (0, 0), cfg.base_size or layouts.BASE_SIZE[cfg.dataset]
    transform = train_transform(cfg, short, tuple(crop)) if train else eval_transform()
    return SegmentationDataset(root, split, spec, transform, seed, cfg.eval_batch_size, cfg.num_workers)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches for steps ``start..total-1``: a fresh seeded permutation per epoch, last partial batch
    dropped. Yields ``(index, epoch)`` keys, so resuming at step s reproduces the same batches.

    Under DDP (``world`` > 1) ``batch_size`` is the global batch and rank ``r`` gets its entries
    ``r, r + world, ...``: the ranks together see exactly the single-process batches. (torch's
    DistributedSampler shards per epoch, not per step, and keeps no step position to resume at.)
    """

    def __init__(self, num_samples: int, batch_size: int, total_steps: int, seed: int, start_step: int = 0,
                 rank: int = 0, world: int = 1):
        if num_samples < batch_size:
            raise ValueError(f"data.batch_size: {batch_size} is larger than the training set ({num_samples} images)")
        if batch_size % world:
            raise ValueError(f"data.batch_size: the global batch {batch_size} does not divide over {world} processes")
        self.n, self.batch, self.total, self.seed, self.start = num_samples, batch_size, total_steps, seed, start_step
        self.rank, self.world = rank, world
        self.steps_per_epoch = num_samples // batch_size

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, offset = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
                perm_epoch = epoch
            batch = perm[offset * self.batch:(offset + 1) * self.batch]
            yield [(int(i), epoch) for i in batch[self.rank::self.world]]


def train_loader(dataset: SegmentationDataset, cfg: DataConfig, total_steps: int, seed: int, start_step: int = 0,
                 pin_memory: bool = False, rank: int = 0, world: int = 1) -> DataLoader:
    sampler = EpochBatchSampler(len(dataset), cfg.batch_size, total_steps, seed, start_step, rank, world)
    # one pass over every step: persistent workers would gain nothing
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, pin_memory=pin_memory,
                      prefetch_factor=4 if cfg.num_workers else None)


def eval_loader(dataset: SegmentationDataset, max_images: int | None = None, pin_memory: bool = False,
                rank: int = 0, world: int = 1) -> DataLoader:
    """The one loader of evaluation and analysis: the first ``max_images`` images (all: None) in
    order, ``data.eval_batch_size`` at a time (1 for a split of mixed image sizes). Rank ``r`` of
    ``world`` evaluates images ``r, r + world, ...``: no image twice, unlike a padded
    DistributedSampler, so the mIoU summed over ranks is the single-process one."""
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    workers = getattr(dataset, "num_workers", 0)
    return DataLoader(dataset, batch_size=getattr(dataset, "eval_batch_size", DataConfig.eval_batch_size),
                      sampler=range(rank, count, world), num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0)
