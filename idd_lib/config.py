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


# The paper-scale networks of the lineage (METHOD.md, "Protocol of that family"), with the head
# widths of the lineage's code: PSP fusion to 128 channels on ResNet18 and 512 on ResNet101 (SKD
# networks/pspnet_combine.py PSPModule(512, 128) / PSPModule(2048, 512); CIRKD models/pspnet.py
# the same for ResNet18), ASPP with 512 channels on ResNets (CIRKD models/deeplabv3.py) and 128 on
# MobileNetV2, whose CIRKD students have no auxiliary head (models/deeplabv3_mobile.py, train_kd.py).
PSPNET_R18 = ModelConfig(block="basic", layers=(2, 2, 2, 2), deep_stem=True, head="psp", head_channels=128)
PSPNET_R101 = ModelConfig(block="bottleneck", layers=(3, 4, 23, 3), deep_stem=True, head="psp", head_channels=512)
DEEPLABV3_R18 = dataclasses.replace(PSPNET_R18, head="aspp", head_channels=512)
DEEPLABV3_R101 = dataclasses.replace(PSPNET_R101, head="aspp", head_channels=512)
DEEPLABV3_MBV2 = ModelConfig(backbone="mobilenet_v2", head="aspp", head_channels=128, aux=False)
ARCHITECTURES = {"pspnet_r18": PSPNET_R18, "pspnet_r101": PSPNET_R101,
                 "deeplabv3_r18": DEEPLABV3_R18, "deeplabv3_r101": DEEPLABV3_R101,
                 "deeplabv3_mbv2": DEEPLABV3_MBV2}


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
    hidden: int = 32                      # read-out 3x3 conv(hidden)-ReLU-1x1; 0: one linear 3x3 conv (PosENet's base)
    teacher_fit: str = "joint"            # joint: phi_T fitted alongside distillation | prefit: fitted first, then frozen
    prefit_steps: int = 300               # teacher_fit=prefit: Adam steps on teacher features of training batches
    prefit_lr: float = 1e-3


@dataclass(frozen=True)
class PairwiseConfig:
    """SKD pair-wise term; the lineage's two graphs (BASELINES.md 2.2), defaults = CIRKD's runs."""
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


_TINY_TEACHER = ModelConfig(block="basic", layers=(1, 1, 1, 1), width=0.5, head="psp", head_channels=128)
_TINY_STUDENT = ModelConfig(block="basic", layers=(1, 1, 1, 1), width=0.125, head="psp", head_channels=32)

PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick", description="smoke size: minutes on 2 CPU cores, numbers not meaningful",
        data=DataConfig(synthetic=SyntheticConfig(num_train=64, num_val=16, height=64, width=128), batch_size=8),
        teacher=_TINY_TEACHER, student=_TINY_STUDENT,
        teacher_train=TrainConfig(iterations=60, lr=0.02),
        student_train=TrainConfig(iterations=30, lr=0.02, eval_every=10),
        seeds=(0,), analysis_images=16, tsne_pixels_per_class=40,
        sweep=SweepConfig(num_train=16, num_val=8, height=32, width=64, teacher_iterations=20,
                          student_iterations=10)),
    "default": Profile(
        name="default", description="the embedded synthetic benchmark, CPU-sized (about 12 minutes on 2 cores)",
        data=DataConfig(synthetic=SyntheticConfig(num_train=240, num_val=60, height=96, width=192), batch_size=8),
        teacher=_TINY_TEACHER, student=_TINY_STUDENT,
        teacher_train=TrainConfig(iterations=1000, lr=0.02),
        student_train=TrainConfig(iterations=300, lr=0.02, eval_every=100),
        seeds=(0, 1, 2)),
}


# Paper-scale presets: real data in its own folder (data.root=...), the lineage's protocols
# (METHOD.md "Protocol of that family", BASELINES.md 2.3). Backbones start from the lineage's
# deep-stem ImageNet files (resnet18-imagenet.pth / resnet101-imagenet.pth, linked from the SKD
# and CIRKD READMEs) expected under pretrained/ in the project (a relative path is read from the
# project root); a missing file stops the run at once saying so. Single-scale whole-image
# evaluation, one image at a time (VOC/ADE20K images differ in size).
PAPER_METHODS = ("baseline", "kd", "skd", "ifvd", "cwd", "cirkd", "idd", "idd+pid")
PRETRAINED_R18 = "pretrained/resnet18-imagenet.pth"
PRETRAINED_R101 = "pretrained/resnet101-imagenet.pth"


def _paper_profile(name: str, description: str, dataset: str, teacher: ModelConfig, student: ModelConfig,
                   crop: tuple[int, int], batch: int, lr: float, weight_decay: float,
                   scale: tuple[float, float], iterations: int = 40000) -> Profile:
    schedule = TrainConfig(iterations=iterations, lr=lr, momentum=0.9, weight_decay=weight_decay, poly_power=0.9,
                           eval_every=5000, checkpoint_every=1000, log_every=50)
    return Profile(
        name=name, description=description,
        data=DataConfig(dataset=dataset, crop_size=crop, scale_range=scale, hflip=True, batch_size=batch,
                        eval_batch_size=1, num_workers=4),
        teacher=dataclasses.replace(teacher, pretrained=PRETRAINED_R101),
        student=dataclasses.replace(student, pretrained=PRETRAINED_R18),
        teacher_train=schedule, student_train=schedule, seeds=(0, 1, 2), methods=PAPER_METHODS)


PROFILES.update({p.name: p for p in (
    # Protocol B (SKD run_train_val.sh / utils/train_options.py; IFVD, CWD and - inferred - IDD):
    # PSPNet-R101 -> PSPNet-R18, 512x512, batch 8, 40k, SGD 0.01 poly 0.9, wd 5e-4, scale 0.5-1.6 + flip
    _paper_profile("paper-cityscapes", "Cityscapes, protocol B of SKD/IFVD/CWD (and IDD): PSPNet-R101 -> PSPNet-R18",
                   "cityscapes", PSPNET_R101, PSPNET_R18, (512, 512), 8, 0.01, 5e-4, (0.5, 1.6)),
    # Protocol A (CIRKD train_kd.py defaults and README): DeepLabV3-R101 -> DeepLabV3-R18,
    # 512x1024, batch 16, 40k, lr 0.02, wd 1e-4, scale 0.5-2.0 (dataset/cityscapes.py)
    _paper_profile("paper-cityscapes-a", "Cityscapes, protocol A of CIRKD/DIST: DeepLabV3-R101 -> DeepLabV3-R18",
                   "cityscapes", DEEPLABV3_R101, DEEPLABV3_R18, (512, 1024), 16, 0.02, 1e-4, (0.5, 2.0)),
    # Pascal VOC aug (CIRKD train_scripts/train_cirkd/voc/pspnet_res18.sh + train_cirkd.py defaults)
    _paper_profile("paper-voc", "Pascal VOC 2012 + SBD (train_aug), CIRKD's VOC recipe: DeepLabV3-R101 -> PSPNet-R18",
                   "voc", DEEPLABV3_R101, PSPNET_R18, (512, 512), 16, 0.02, 1e-4, (0.5, 2.0)),
    # ADE20K (CIRKD train_scripts/train_cirkd/ade20k/deeplabv3_res18.sh)
    _paper_profile("paper-ade20k", "ADE20K (150 classes), CIRKD's ADE20K recipe: DeepLabV3-R101 -> DeepLabV3-R18",
                   "ade20k", DEEPLABV3_R101, DEEPLABV3_R18, (512, 512), 16, 0.02, 1e-4, (0.5, 2.0)),
)})


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
