"""Configuration as dataclasses, and the named profiles (presets) of the study.

A :class:`RunConfig` fully describes one training run; its hash names cached teachers, and its
``asdict`` is written into every run directory. Profiles bundle the data, the two networks, the
schedules and the seeds/methods the study runs. Overrides use dotted keys
(``"idd.metric=cosine"``) and are validated: an unknown key is an error, never a silent typo.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .data.synthetic import SyntheticConfig


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"            # synthetic | cityscapes
    root: str = ""                        # dataset folder; empty = the generated synthetic set's cache
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    crop_size: tuple[int, int] | None = None  # training crop (h, w); None = whole image
    scale_range: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    batch_size: int = 8
    eval_batch_size: int = 16
    num_workers: int = 0


@dataclass(frozen=True)
class ModelConfig:
    block: str = "basic"                  # basic (ResNet18/34) | bottleneck (ResNet50/101)
    layers: tuple[int, ...] = (2, 2, 2, 2)
    width: float = 1.0                    # channel multiplier of the ResNet stages
    deep_stem: bool = False
    output_stride: int = 8
    head: str = "psp"                     # psp | aspp
    head_channels: int = 512
    psp_bins: tuple[int, ...] = (1, 2, 3, 6)
    aspp_rates: tuple[int, ...] = (12, 24, 36)
    dropout: float = 0.1
    aux: bool = True


# The paper-scale networks of the lineage (METHOD.md, "Protocol of that family").
PSPNET_R18 = ModelConfig(block="basic", layers=(2, 2, 2, 2), deep_stem=True, head="psp", head_channels=512)
PSPNET_R101 = ModelConfig(block="bottleneck", layers=(3, 4, 23, 3), deep_stem=True, head="psp", head_channels=512)
DEEPLABV3_R18 = dataclasses.replace(PSPNET_R18, head="aspp", head_channels=256)
DEEPLABV3_R101 = dataclasses.replace(PSPNET_R101, head="aspp", head_channels=256)
ARCHITECTURES = {"pspnet_r18": PSPNET_R18, "pspnet_r101": PSPNET_R101,
                 "deeplabv3_r18": DEEPLABV3_R18, "deeplabv3_r101": DEEPLABV3_R101}


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    eval_every: int = 0                   # 0: evaluate at the end only
    checkpoint_every: int = 0             # 0: checkpoint at the end only
    log_every: int = 10
    amp: bool = True                      # bf16 autocast, CUDA only
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    seed: int = 0


@dataclass(frozen=True)
class KDConfig:
    temperature: float = 1.0


@dataclass(frozen=True)
class IDDConfig:
    """Options of the IDD loss; the first value of each is our reading of the paper (METHOD.md)."""
    label_sampling: str = "nearest"       # nearest | soft
    centres: str = "per-image"            # per-image | per-batch
    metric: str = "euclidean"             # euclidean | cosine | sqeuclidean
    normalize: str = "mean"               # mean | none
    penalty: str = "squared"              # squared | smooth-l1
    min_pixels: int = 1


@dataclass(frozen=True)
class PIDConfig:
    """Options of position information distillation (our reconstruction, METHOD.md H1)."""
    mode: str = "readout"                 # readout | probe
    targets: tuple[str, ...] = ("x", "y", "gaussian")
    hidden: int = 32


@dataclass(frozen=True)
class LossConfig:
    method: str = "baseline"
    weights: tuple[tuple[str, float], ...] = ()   # overrides of the method's default weights
    aux_weight: float = 0.4
    kd: KDConfig = field(default_factory=KDConfig)
    idd: IDDConfig = field(default_factory=IDDConfig)
    pid: PIDConfig = field(default_factory=PIDConfig)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: ModelConfig | None = None
    teacher_train: TrainConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return config_digest(self)


def config_digest(cfg: Any) -> str:
    blob = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Profile:
    """A preset of the study: what to train, how long, and which methods/seeds the study runs."""
    name: str
    description: str
    data: DataConfig
    teacher: ModelConfig
    student: ModelConfig
    teacher_train: TrainConfig
    student_train: TrainConfig
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("baseline", "kd", "idd", "idd+pid")
    analysis_images: int = 60             # validation images for distance matrices / probes
    tsne_pixels_per_class: int = 150

    def run_config(self, method: str = "baseline", seed: int = 0) -> RunConfig:
        return RunConfig(data=self.data, model=self.student,
                         train=dataclasses.replace(self.student_train, seed=seed),
                         loss=LossConfig(method=method), teacher=self.teacher, teacher_train=self.teacher_train)

    def teacher_config(self) -> RunConfig:
        return RunConfig(data=self.data, model=self.teacher, train=self.teacher_train)


_TINY_TEACHER = ModelConfig(block="basic", layers=(1, 1, 1, 1), width=0.5, head="psp", head_channels=128)
_TINY_STUDENT = ModelConfig(block="basic", layers=(1, 1, 1, 1), width=0.125, head="psp", head_channels=32)

PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick", description="smoke size: minutes on 2 CPU cores, numbers not meaningful",
        data=DataConfig(synthetic=SyntheticConfig(num_train=64, num_val=16, height=64, width=128), batch_size=8),
        teacher=_TINY_TEACHER, student=_TINY_STUDENT,
        teacher_train=TrainConfig(iterations=60, lr=0.02),
        student_train=TrainConfig(iterations=30, lr=0.02),
        seeds=(0,), analysis_images=16, tsne_pixels_per_class=40),
    "default": Profile(
        name="default", description="the embedded synthetic benchmark, CPU-sized (about 12 minutes on 2 cores)",
        data=DataConfig(synthetic=SyntheticConfig(num_train=240, num_val=60, height=96, width=192), batch_size=8),
        teacher=_TINY_TEACHER, student=_TINY_STUDENT,
        teacher_train=TrainConfig(iterations=1000, lr=0.02),
        student_train=TrainConfig(iterations=300, lr=0.02, eval_every=100),
        seeds=(0, 1, 2)),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"profile: unknown profile {name!r}; expected one of {sorted(PROFILES)}") from None


def parse_assignments(text: str, what: str) -> dict[str, str]:
    """``"a=1, b.c=x"`` -> ``{"a": "1", "b.c": "x"}``; ``what`` names the parameter in errors."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what}: expected comma-separated key=value pairs, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_weights(text: str) -> dict[str, float]:
    """``"idd=5, kd=1"`` -> ``{"idd": 5.0, "kd": 1.0}``; weights must be finite and >= 0."""
    weights = {}
    for key, value in parse_assignments(text, "weights").items():
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"weights: {key}={value!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weights: {key}={value} must be a finite number >= 0")
        weights[key] = weight
    return weights


def _coerce(value: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"options: {key} expects true/false, got {value!r}")
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        try:
            return type(current)(value)
        except ValueError:
            raise ValueError(f"options: {key} expects a {type(current).__name__}, got {value!r}") from None
    if isinstance(current, tuple):
        parts = [p for p in value.replace("+", " ").replace("/", " ").split()]
        return tuple(_coerce(p, current[0], key) for p in parts) if current else tuple(parts)
    return value


def apply_overrides(cfg: Any, overrides: dict[str, str]) -> Any:
    """Return a copy of a (nested) dataclass with dotted-key overrides applied and type-coerced."""
    for dotted, value in overrides.items():
        cfg = _replace_path(cfg, dotted.split("."), value, dotted)
    return cfg


def _replace_path(obj: Any, path: list[str], value: str, dotted: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    if path[0] not in names:
        raise ValueError(f"options: unknown option {dotted!r}; {type(obj).__name__} has {sorted(names)}")
    current = getattr(obj, path[0])
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            raise ValueError(f"options: {dotted!r} is a group; set one of its fields, e.g. {dotted}.<name>=...")
        new = _coerce(value, current, dotted) if current is not None else value
    else:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"options: unknown option {dotted!r}")
        new = _replace_path(current, path[1:], value, dotted)
    return dataclasses.replace(obj, **{path[0]: new})
