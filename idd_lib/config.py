"""The configuration schema (dataclasses) and the parser of dotted overrides.

A :class:`RunConfig` fully describes one training run; its hash names cached teachers, and its
``asdict`` is written into every run directory. A :class:`Profile` bundles the data, the two
networks, the schedules and the seeds/methods the study runs; the named profiles themselves are
data in :mod:`idd_lib.presets`. Overrides use dotted keys (``"idd.metric=cosine"``) and are
validated: an unknown key is an error, never a silent typo.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic dataset; two equal configs produce identical files."""

    num_train: int = 240
    num_val: int = 60
    num_tune: int = 60  # the held-out split that tuning looks at (val is never used to tune)
    height: int = 96
    width: int = 192
    position_prior: float = 1.0  # 0 = position uninformative, 1 = Cityscapes-like, 2 = stronger
    appearance_overlap: float = 0.6  # 0 = distinct class colours, 1 = confusable pairs identical
    lighting: float = 0.3  # amplitude of per-image illumination variation
    noise: float = 0.04  # per-pixel Gaussian noise std (image range [0, 1])
    object_scale: float = 3.0  # size of persons, poles and signs; 3: they span output-stride-8 cells at 96x192
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.num_train, self.num_val, self.num_tune) < 0:
            raise ValueError("num_train, num_val and num_tune must be >= 0")
        if self.height < 16 or self.width < 16:
            raise ValueError("height and width must be >= 16")
        if not 0.0 <= self.position_prior <= 2.0:
            raise ValueError("position_prior must be in [0, 2]")
        if not 0.0 <= self.appearance_overlap <= 1.0:
            raise ValueError("appearance_overlap must be in [0, 1]")
        if self.object_scale <= 0:
            raise ValueError("object_scale must be > 0")
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
    amp: bool = True                      # bf16 autocast, CUDA only (unless cpu_amp)
    channels_last: bool = True            # NHWC tensors and weights, CUDA only (unless cpu_amp)
    cpu_amp: bool = False                 # amp and channels_last on CPU too: fast where it has native bf16
    compile: bool = False                 # torch.compile the student and the teacher
    sync_bn: bool = True                  # SyncBatchNorm across DDP ranks (CUDA; PyTorch has none for CPU)
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    seed: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)

    def accelerated(self, cuda: bool) -> bool:
        """Whether ``amp`` and ``channels_last`` apply: on CUDA, and on CPU with ``cpu_amp``."""
        return cuda or self.cpu_amp


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
    pixel_contrast: int = 4096            # pixel-queue entries contrasted per step: per class (CIRKD) or in total
    region_contrast: int = 1024           # region-queue entries, likewise
    contrast_sample: str = "per-class"    # per-class: CIRKD's K x pixel_contrast | total: about pixel_contrast (cheaper)
    pixels_per_class: int = 16            # pixels enqueued per class and image
    region_weight: float = 1.0            # pixel-to-region term relative to pixel-to-pixel


@dataclass(frozen=True)
class DISTConfig:
    """DIST (Huang et al. 2022): Pearson relations of the class distributions; DIST_KD's segmentation defaults."""
    beta: float = 1.0                     # inter-class relation (each pixel's distribution over classes)
    gamma: float = 1.0                    # intra-class relation (each class over the batch's pixels)
    temperature: float = 1.0              # softmax temperature; DIST_KD's segmentation code has none (1)


@dataclass(frozen=True)
class BPKDConfig:
    """BPKD (Liu et al. 2024), our reconstruction: edge (pixel KL) and body (channel-wise) terms."""
    temperature: float = 4.0
    edge_weight: float = 50.0             # lambda_edge
    body_weight: float = 20.0             # lambda_body
    edge_radius: int = 3                  # the label-boundary band: (2r+1)^2 dilation minus erosion at label size


@dataclass(frozen=True)
class AfDCDConfig:
    """Af-DCD (Fan et al. 2023): masked feature mimicking + omni-contrastive loss (OSVAI/Af-DCD defaults)."""
    fd_weight: float = 2e-6               # --lambda-fd (Cityscapes scripts)
    ctr_weight: float = 0.005             # --lambda-ctr (Cityscapes scripts)
    temperature: float = 0.07             # tau_ocd
    groups: int = 16                      # M_ocd: channel groups
    pool: int = 4                         # max-pool kernel before contrasting (0: none)
    patch: int = 4                        # square spatial patches of patch x patch positions
    mask: str = "random"                  # random: drop mask_ratio of the positions | centre: the middle ninth
    mask_ratio: float = 0.75
    projector: str = "plain"              # plain: conv3x3-ReLU-conv3x3 | enhanced: two-branch EnhancedProjector


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
    # the methods added after the first study (ADDED_LATER: out of the digest at their defaults)
    kd_ls: KDConfig = field(default_factory=lambda: KDConfig(temperature=2.0))
    dist: DISTConfig = field(default_factory=DISTConfig)
    bpkd: BPKDConfig = field(default_factory=BPKDConfig)
    afdcd: AfDCDConfig = field(default_factory=AfDCDConfig)


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


# The version of the embedded benchmark's generator (data.synthetic): part of every digest of a
# synthetic config, so a changed generator never reuses data, teachers or runs of an earlier one.
SYNTHETIC_VERSION = 2

# Settings that cannot change what a run computes (how many images are evaluated at once, how many
# loader processes): left out of the digest, so changing them reuses a trained teacher or run.
RUNTIME_ONLY = {"data": ("eval_batch_size", "num_workers")}

# Options added after runs and teachers were shipped: left out of the digest at the value that
# means the behaviour from before they existed, so those runs and teachers keep their names.
ADDED_LATER: dict[str, dict[str, Any]] = {
    **{group: {"cpu_amp": False} for group in ("train", "teacher_train")},
    # the options of the terms added with DIST, BPKD, Af-DCD and KD with logit standardisation
    "loss": {"kd_ls": dataclasses.asdict(LossConfig().kd_ls), "dist": dataclasses.asdict(DISTConfig()),
             "bpkd": dataclasses.asdict(BPKDConfig()), "afdcd": dataclasses.asdict(AfDCDConfig())},
}


def config_digest(cfg: Any) -> str:
    fields = dataclasses.asdict(cfg)
    if isinstance(cfg, SyntheticConfig):
        fields["generator"] = SYNTHETIC_VERSION
    return fields_digest(fields)


def fields_digest(fields: dict[str, Any]) -> str:
    """:func:`config_digest` of a config given as its fields (``to_dict()``, or ``config.json`` read
    back): what checks that a stored config is the one its recorded digest names."""
    fields = copy.deepcopy(fields)
    if isinstance(fields.get("data"), dict) and fields["data"].get("dataset") == "synthetic":
        fields["data"]["synthetic"]["generator"] = SYNTHETIC_VERSION
    if isinstance(fields.get("loss"), dict) and fields["loss"]["method"] == "baseline":
        # labels only: the terms' options change nothing a baseline or a teacher computes
        fields["loss"] = {k: v for k, v in fields["loss"].items() if not isinstance(v, dict)}
    for group, defaults in ADDED_LATER.items():
        if isinstance(fields.get(group), dict):
            fields[group] = {k: v for k, v in fields[group].items() if k not in defaults or v != defaults[k]}
    for group, names in RUNTIME_ONLY.items():
        if isinstance(fields.get(group), dict):
            # the generator's knobs mean nothing to a dataset folder: they select no other run either
            unused = ("synthetic",) if fields[group].get("dataset", "synthetic") != "synthetic" else ()
            fields[group] = {k: v for k, v in fields[group].items() if k not in (*names, *unused)}
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def variant_digest(cfg: RunConfig) -> str:
    """The digest of a run's config without its seed: equal for the seeds of one variant."""
    return config_digest(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=0)))


MAX_SIZE = 8192    # pixels of a training crop side: larger ones only exhaust memory
MAX_SEED = 10**6  # seeds are mixed into per-sample 64-bit RNG seeds (data.datasets): keep the product in range


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"a number >= {low:g}"


def _in_range(low: float, high: float, high_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    return ((lambda v: low <= v < high) if high_open else (lambda v: low <= v <= high),
            f"a number in [{low:g}, {high:g}{')' if high_open else ']'}")


def _all_at_least(low: float, count: int | None = None) -> tuple[Callable[[Any], bool], str]:
    what = f"{count} numbers" if count else "one or more numbers"
    return (lambda v: len(v) >= 1 and (count is None or len(v) == count) and min(v) >= low), f"{what} >= {low:g}"


_POSITIVE = ((lambda v: v > 0), "a number > 0")
# What the numeric options accept, by config class; what a constructor already checks (choices of
# heads, metrics and the loss terms' own options) is checked by building the run (runs.check_run).
LIMITS: dict[type, dict[str, tuple[Callable[[Any], bool], str]]] = {
    DataConfig: {
        "batch_size": ((lambda v: v >= 2), "an integer >= 2 (BatchNorm needs two images per batch)"),
        "eval_batch_size": _at_least(1), "num_workers": _at_least(0), "base_size": _at_least(0),
        "crop_size": ((lambda v: v is None or len(v) == 2 and 1 <= min(v) and max(v) <= MAX_SIZE),
                      f"two sizes from 1 to {MAX_SIZE} (h w), or none"),
        "scale_range": ((lambda v: len(v) == 2 and 0 < v[0] <= v[1]), "two factors 0 < low <= high"),
    },
    ModelConfig: {
        "layers": _all_at_least(1, 4), "head_channels": _at_least(1), "psp_bins": _all_at_least(1),
        "aspp_rates": _all_at_least(1), "dropout": _in_range(0, 1, high_open=True),
        # the ResNet stages have round(64 * width) channels at least, and never fewer than 4
        "width": ((lambda v: v >= 1 / 16), "a number >= 0.0625 (the thinnest stage keeps 4 channels)"),
    },
    TrainConfig: {
        "iterations": _at_least(1), "lr": _POSITIVE, "momentum": _in_range(0, 1, high_open=True),
        "weight_decay": _at_least(0), "poly_power": _at_least(0), "eval_every": _at_least(0),
        "checkpoint_every": _at_least(0), "log_every": _at_least(1),
        "seed": ((lambda v: 0 <= v <= MAX_SEED), f"an integer from 0 to {MAX_SEED}"),
        "device": ((lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None), "auto, cpu, cuda or cuda:N"),
    },
    LossConfig: {"aux_weight": _at_least(0)},
    IDDConfig: {"min_pixels": _at_least(1)},
    DISTConfig: {"beta": _at_least(0), "gamma": _at_least(0), "temperature": _POSITIVE},
    BPKDConfig: {"temperature": _POSITIVE, "edge_weight": _at_least(0), "body_weight": _at_least(0),
                 "edge_radius": _at_least(1)},
    AfDCDConfig: {"fd_weight": _at_least(0), "ctr_weight": _at_least(0), "temperature": _POSITIVE,
                  "groups": _at_least(1), "pool": _at_least(0), "patch": _at_least(1),
                  "mask_ratio": _in_range(0, 1, high_open=True)},
    PIDConfig: {"targets": ((lambda v: len(v) >= 1), "one or more position maps (x y gaussian)")},
    AdversarialConfig: {"d_weight": _at_least(0), "gp_weight": _at_least(0), "lr": _POSITIVE,
                        "betas": ((lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)), "two numbers in [0, 1)"),
                        "conv_dim": _at_least(1)},
    SyntheticConfig: {"num_train": _at_least(2), "num_val": _at_least(1), "num_tune": _at_least(0)},
}


def check_limits(cfg: Any, prefix: str = "") -> None:
    """Raise a one-line ``ValueError`` naming the first option of ``cfg`` (a nested config) outside
    what it accepts (:data:`LIMITS`)."""
    limits = LIMITS.get(type(cfg), {})
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_limits(value, f"{name}.")
        elif f.name in limits and not limits[f.name][0](value):
            noun = "an integer" if isinstance(value, int) and not isinstance(value, bool) else "a number"
            raise ValueError(f"options: {name} expects {limits[f.name][1].replace('a number', noun, 1)}, "
                             f"got {_show(value)}")


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else repr(value)


SWEEP_NAME = "/sweep/prior"  # a prior sweep's profile is named <profile>/sweep/prior<p> (its results folder)


@dataclass(frozen=True)
class SweepConfig:
    """The position-prior sweep of 07_position: per prior value a copy of the profile with its own
    data, hence its own teacher. Sizes and schedules left at None are the profile's, so the sweep's
    teachers are as competent as the profile's own; at the profile's own prior the sweep then *is*
    the profile (its teacher and its runs, no extra training)."""
    priors: tuple[float, ...] = (0.0, 1.0)        # SyntheticConfig.position_prior: uninformative, Cityscapes-like
    # PID's own gain, prior by prior: the full objective (KD + IDD + PID) against it without PID
    methods: tuple[str, ...] = ("idd", "idd+pid")
    seeds: tuple[int, ...] = (0, 1, 2)            # >= 3 per cell: PID's gain per prior is a paired test
    num_train: int | None = None
    num_val: int | None = None
    height: int | None = None
    width: int | None = None
    teacher_iterations: int | None = None
    student_iterations: int | None = None

    def resized(self) -> bool:
        return any(v is not None for v in (self.num_train, self.num_val, self.height, self.width,
                                           self.teacher_iterations, self.student_iterations))


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
    options: tuple[tuple[str, str], ...] = ()  # the run-config options applied by configure()

    def configure(self, options: dict[str, str]) -> Profile:
        """This profile with run-config options applied to its parts: ``data.*``, ``model.*`` (the
        student), ``train.*`` (the student's schedule), ``teacher.*`` and ``teacher_train.*``. A
        study on a dataset folder (``data.root=...``) or at another size is this. Per-run settings
        (``loss.*``, ``train.seed``) are refused here: they belong to one run, not to the profile."""
        for key in options:
            if key.startswith("loss.") or key == "train.seed":
                raise ValueError(f"options: {key} is set per run (02_distill's options, 03_ablation's variants), "
                                 "not for a whole profile")
        if not options:
            return self
        cfg = apply_overrides(self.run_config(seed=self.student_train.seed), options)
        check_limits(cfg)
        return dataclasses.replace(self, data=cfg.data, student=cfg.model, student_train=cfg.train,
                                   teacher=cfg.teacher, teacher_train=cfg.teacher_train,
                                   options=(*self.options, *options.items()))

    def sweep_profile(self, prior: float) -> Profile:
        """The sweep's copy of this profile for one ``position_prior``: the sweep's sizes, schedules,
        methods and seeds, results under ``<profile>/sweep/prior<p>/`` (teachers and data are cached
        by their config digests, so each prior trains - or installs - its own teacher once); at the
        profile's own prior, unresized, the profile itself with the sweep's methods and seeds."""
        if self.data.dataset != "synthetic":
            raise ValueError(f"profile {self.name}: the position-prior sweep needs the synthetic dataset, "
                             f"not {self.data.dataset!r}")
        s = self.sweep
        if prior == self.data.synthetic.position_prior and not s.resized():
            return dataclasses.replace(self, seeds=s.seeds, methods=s.methods)
        sizes = {"num_train": s.num_train, "num_val": s.num_val, "height": s.height, "width": s.width}
        synthetic = dataclasses.replace(self.data.synthetic, position_prior=prior,
                                        **{k: v for k, v in sizes.items() if v is not None})
        teacher_train, student_train = self.teacher_train, self.student_train
        if s.teacher_iterations is not None:
            teacher_train = dataclasses.replace(teacher_train, iterations=s.teacher_iterations, eval_every=0)
        if s.student_iterations is not None:
            student_train = dataclasses.replace(student_train, iterations=s.student_iterations, eval_every=0)
        return dataclasses.replace(
            self, name=f"{self.name}{SWEEP_NAME}{prior:g}",
            description=f"{self.description}; position-prior sweep at {prior:g}",
            data=dataclasses.replace(self.data, synthetic=synthetic,
                                     crop_size=None if s.height or s.width else self.data.crop_size),
            teacher_train=teacher_train, student_train=student_train,
            seeds=s.seeds, methods=s.methods)

    def run_config(self, method: str = "baseline", seed: int = 0) -> RunConfig:
        return RunConfig(data=self.data, model=self.student,
                         train=dataclasses.replace(self.student_train, seed=seed),
                         loss=LossConfig(method=method), teacher=self.teacher, teacher_train=self.teacher_train)

    def teacher_config(self) -> RunConfig:
        return teacher_of(self.run_config())


def teacher_of(cfg: RunConfig) -> RunConfig:
    """The teacher a student run distils from: trained on the run's data (dataset, folder,
    synthetic knobs, augmentation, batch) with the run's ``teacher`` network and ``teacher_train``
    schedule. Its digest names its cache folder, so any of these options selects (and trains once)
    its own teacher."""
    if cfg.teacher is None or cfg.teacher_train is None:
        raise ValueError("teacher: this run config has no teacher network or schedule")
    return RunConfig(data=cfg.data, model=cfg.teacher, train=cfg.teacher_train)


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
            number = type(current)(value)
        except ValueError:
            kind = "an integer" if isinstance(current, int) else "a number"
            raise ValueError(f"options: {key} expects {kind}, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"options: {key} expects a finite number, got {value!r}")
        return number
    if isinstance(current, tuple):
        parts = [p for p in value.replace("+", " ").replace("/", " ").split()]
        return tuple(_coerce(p, current[0], key) for p in parts) if current else tuple(parts)
    return value


# Run-config fields that have a parameter of their own rather than an option.
NOT_OPTIONS = {"loss.method": "the method parameter (method=idd)",
               "loss.weights": 'the weights parameter (weights="idd=10,kd=1")'}


def apply_overrides(cfg: Any, overrides: dict[str, str]) -> Any:
    """Return a copy of a (nested) dataclass with dotted-key overrides applied and type-coerced."""
    for dotted, value in overrides.items():
        if isinstance(cfg, RunConfig) and dotted in NOT_OPTIONS:
            raise ValueError(f"options: {dotted} is not an option; set it with {NOT_OPTIONS[dotted]}")
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
    try:
        return dataclasses.replace(obj, **{path[0]: new})
    except ValueError as err:  # a config's own check (SyntheticConfig.__post_init__) names no option
        raise ValueError(f"options: {dotted}={value}: {err}") from None
