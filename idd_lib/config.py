"""The configuration schema (dataclasses) and the parser of dotted overrides.

A :class:`RunConfig` fully describes one training run; its hash names cached teachers, and its
``asdict`` is written into every run directory. A :class:`Profile` bundles the data, the two
networks, the schedules and the seeds/methods the study runs; the named profiles themselves are
data in :mod:`idd_lib.presets`. Overrides use dotted keys (``"idd.metric=cosine"``) and are
validated: an unknown key is an error, never a silent typo.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic dataset; two equal configs produce identical files."""

    num_train: int = 240
    num_val: int = 60
    height: int = 96
    width: int = 192
    position_prior: float = 1.0  # 0 = position uninformative, 1 = Cityscapes-like, 2 = stronger
    appearance_overlap: float = 0.6  # 0 = distinct class colours, 1 = confusable pairs identical
    lighting: float = 0.3  # amplitude of per-image illumination variation
    noise: float = 0.04  # per-pixel Gaussian noise std (image range [0, 1])
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_train < 0 or self.num_val < 0:
            raise ValueError("num_train and num_val must be >= 0")
        if self.height < 16 or self.width < 16:
            raise ValueError("height and width must be >= 16")
        if not 0.0 <= self.position_prior <= 2.0:
            raise ValueError("position_prior must be in [0, 2]")
        if not 0.0 <= self.appearance_overlap <= 1.0:
            raise ValueError("appearance_overlap must be in [0, 1]")
        if self.lighting < 0 or self.noise < 0:
            raise ValueError("lighting and noise must be >= 0")



@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"            # synthetic | cityscapes | voc | ade20k | folder
    root: str = ""                        # dataset folder; empty = the generated synthetic set's cache
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    crop_size: tuple[int, int] | None = None  # training crop (h, w); None = whole image
    scale_range: tuple[float, float] = (0.75, 1.5)
    base_size: int = 0                    # short side that scale 1.0 means; 0 = the dataset's (data.layouts)
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
    backbone: str = "resnet"              # resnet (block/layers/deep_stem) | mobilenet_v2 (torchvision's)
    pretrained: str = ""                  # backbone init: "" none | "imagenet" (torchvision download) | a file path


@dataclass(frozen=True)
class EvalConfig:
    """How validation predicts. The lineage reports single-scale whole-image mIoU (the default);
    sliding windows and multi-scale + flip are the options of mmseg-style evaluation."""
    mode: str = "whole"                   # whole | slide
    crop_size: tuple[int, int] = (512, 512)  # sliding window (h, w)
    stride: tuple[int, int] = (341, 341)  # sliding stride (mmseg's 2/3 of a 512 window)
    scales: tuple[float, ...] = (1.0,)    # image rescaled by each; softmax averaged over scales (and flips)
    flip: bool = False                    # also predict the horizontally flipped image


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
    channels_last: bool = True            # NHWC tensors and weights, CUDA only
    compile: bool = False                 # torch.compile the student and the teacher
    sync_bn: bool = True                  # SyncBatchNorm across DDP ranks (CUDA; PyTorch has none for CPU)
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    seed: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class KDConfig:
    temperature: float = 1.0


@dataclass(frozen=True)
class IDDConfig:
    """Options of the IDD loss; the first value of each is our reading of the paper (docs/method.md)."""
    label_sampling: str = "nearest"       # nearest | soft
    centres: str = "per-image"            # per-image | per-batch
    metric: str = "euclidean"             # euclidean | cosine | sqeuclidean
    normalize: str = "mean"               # mean | none
    penalty: str = "squared"              # squared | smooth-l1
    min_pixels: int = 1


@dataclass(frozen=True)
class PIDConfig:
    """Options of position information distillation (our reconstruction, docs/method.md, hypothesis H1)."""
    mode: str = "readout"                 # readout | probe
    targets: tuple[str, ...] = ("x", "y", "gaussian")
    hidden: int = 32                      # read-out 3x3 conv(hidden)-ReLU-1x1; 0: one linear 3x3 conv (PosENet's base)
    teacher_fit: str = "joint"            # joint: phi_T fitted alongside distillation | prefit: fitted first, then frozen
    prefit_steps: int = 300               # teacher_fit=prefit: Adam steps on teacher features of training batches
    prefit_lr: float = 1e-3


@dataclass(frozen=True)
class PairwiseConfig:
    """SKD pair-wise term; the lineage's two graphs (docs/baselines.md), defaults = CIRKD's runs."""
    variant: str = "cirkd"                # cirkd: 2x2 max-pooled nodes | skd: official graph pooled by pool_scale
    pool_scale: float = 0.5               # skd variant: pooling kernel = pool_scale x feature size


@dataclass(frozen=True)
class AdversarialConfig:
    """Holistic (adversarial) term: the discriminator and its own optimiser (IFVD/TorchDistiller)."""
    loss: str = "wgan-gp"                 # wgan-gp (SKD, IFVD) | hinge (CIRKD)
    input: str = "logits"                 # logits (the peers' code) | image+logits (the SKD paper's text)
    d_weight: float = 0.1                 # discriminator loss weight
    gp_weight: float = 10.0               # gradient penalty (wgan-gp)
    lr: float = 4e-4                      # discriminator Adam
    betas: tuple[float, float] = (0.9, 0.99)
    conv_dim: int = 64


@dataclass(frozen=True)
class CWDConfig:
    temperature: float = 4.0              # the official CWD README's logits setting


@dataclass(frozen=True)
class CIRKDConfig:
    """CIRKD's cross-image terms (train_cirkd.py defaults)."""
    temperature: float = 0.1              # similarity temperature (mini-batch and memory)
    kd_temperature: float = 1.0           # memory terms' KL temperature
    minibatch_pool: int = 1               # mini-batch avg-pool kernel; 1 = none (CIRKD default), 2 = CVPR option
    pixel_memory: int = 20000             # teacher pixel queue per class
    region_memory: int = 2000             # teacher region (class-mean) queue per class
    pixel_contrast: int = 4096            # queue entries contrasted per step, over all classes
    region_contrast: int = 1024
    pixels_per_class: int = 16            # pixels enqueued per class and image
    region_weight: float = 1.0            # pixel-to-region term relative to pixel-to-pixel


@dataclass(frozen=True)
class LossConfig:
    method: str = "baseline"
    weights: tuple[tuple[str, float], ...] = ()   # overrides of the method's default weights
    aux_weight: float = 0.4
    kd: KDConfig = field(default_factory=KDConfig)
    idd: IDDConfig = field(default_factory=IDDConfig)
    pid: PIDConfig = field(default_factory=PIDConfig)
    pa: PairwiseConfig = field(default_factory=PairwiseConfig)
    ho: AdversarialConfig = field(default_factory=AdversarialConfig)
    cwd: CWDConfig = field(default_factory=CWDConfig)
    cirkd: CIRKDConfig = field(default_factory=CIRKDConfig)


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
class SweepConfig:
    """The position-prior sweep of 07_position: per prior value a reduced-size copy of the profile
    (its own data, hence its own cached teacher), sized to fit the study's time budget."""
    priors: tuple[float, ...] = (0.0, 1.0, 2.0)   # SyntheticConfig.position_prior values
    methods: tuple[str, ...] = ("baseline", "pid", "idd+pid")
    seeds: tuple[int, ...] = (0,)
    num_train: int = 96
    num_val: int = 24
    height: int = 48
    width: int = 96
    teacher_iterations: int = 300
    student_iterations: int = 150


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
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def sweep_profile(self, prior: float) -> Profile:
        """The sweep's copy of this profile for one ``position_prior``: reduced data and schedules,
        the sweep's methods and seeds, results under ``<profile>/sweep/prior<p>/`` (teachers and
        data are cached by their config digests, so each prior trains its own teacher once)."""
        if self.data.dataset != "synthetic":
            raise ValueError(f"profile {self.name}: the position-prior sweep needs the synthetic dataset, "
                             f"not {self.data.dataset!r}")
        s = self.sweep
        synthetic = dataclasses.replace(self.data.synthetic, position_prior=prior, num_train=s.num_train,
                                        num_val=s.num_val, height=s.height, width=s.width)
        return dataclasses.replace(
            self, name=f"{self.name}/sweep/prior{prior:g}",
            description=f"{self.description}; position-prior sweep at {prior:g} (reduced size)",
            data=dataclasses.replace(self.data, synthetic=synthetic, crop_size=None),
            teacher_train=dataclasses.replace(self.teacher_train, iterations=s.teacher_iterations, eval_every=0),
            student_train=dataclasses.replace(self.student_train, iterations=s.student_iterations, eval_every=0),
            seeds=s.seeds, methods=s.methods)

    def run_config(self, method: str = "baseline", seed: int = 0) -> RunConfig:
        return RunConfig(data=self.data, model=self.student,
                         train=dataclasses.replace(self.student_train, seed=seed),
                         loss=LossConfig(method=method), teacher=self.teacher, teacher_train=self.teacher_train)

    def teacher_config(self) -> RunConfig:
        return RunConfig(data=self.data, model=self.teacher, train=self.teacher_train)


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
        if current is None:  # e.g. data.crop_size: the annotation says what a value must parse to
            annotation = next(str(f.type) for f in dataclasses.fields(obj) if f.name == path[0])
            example = (0,) if annotation.startswith("tuple[int") else ""
            new = None if value.lower() in ("", "none") else _coerce(value, example, dotted)
        else:
            new = _coerce(value, current, dotted)
    else:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"options: unknown option {dotted!r}")
        new = _replace_path(current, path[1:], value, dotted)
    return dataclasses.replace(obj, **{path[0]: new})
