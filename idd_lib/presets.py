"""The presets of the study as data: networks (``ARCHITECTURES``) and profiles (``PROFILES``).

The lineage's paper-scale networks, and the named profiles from the CPU-sized synthetic
benchmark to the paper-scale protocols.


The schema they fill (``ModelConfig``, ``Profile``, ...) and the override parser live in
:mod:`idd_lib.config`; this module only holds values.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .config import DataConfig, ModelConfig, Profile, SweepConfig, SyntheticConfig, TrainConfig, parse_assignments

# The paper-scale networks of the lineage (docs/method.md, "The protocol of the method family"),
# with the head widths of the lineage's code: PSP fusion to 128 channels on ResNet18 and 512 on ResNet101 (SKD
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


_TINY_TEACHER = ModelConfig(block="basic", layers=(1, 1, 1, 1), width=0.5, head="psp", head_channels=128)
# A quarter of the teacher's width, as ResNet18 is about a quarter of ResNet101's compute
_TINY_STUDENT = ModelConfig(block="basic", layers=(1, 1, 1, 1), width=0.25, head="psp", head_channels=64)


def _synthetic_profile(name: str, description: str, images: tuple[int, int, int], size: tuple[int, int],
                       iterations: tuple[int, int], eval_every: tuple[int, int], student_cpu_amp: bool = False,
                       **fields: Any) -> Profile:
    """A profile on the embedded benchmark with the tiny PSP networks: ``images`` (train, val, tune)
    of ``size`` (h, w), ``iterations`` and ``eval_every`` (teacher, student), SGD at lr 0.02, batch 8;
    ``student_cpu_amp``: students train in bf16 autocast on CPU too (the teacher in fp32)."""
    synthetic = SyntheticConfig(num_train=images[0], num_val=images[1], num_tune=images[2], height=size[0],
                                width=size[1])
    return Profile(name=name, description=description, data=DataConfig(synthetic=synthetic, batch_size=8),
                   teacher=_TINY_TEACHER, student=_TINY_STUDENT,
                   teacher_train=TrainConfig(iterations=iterations[0], lr=0.02, eval_every=eval_every[0]),
                   student_train=TrainConfig(iterations=iterations[1], lr=0.02, eval_every=eval_every[1],
                                             cpu_amp=student_cpu_amp), **fields)


PROFILES: dict[str, Profile] = {p.name: p for p in (
    _synthetic_profile("quick", "smoke size: minutes on 2 CPU cores, numbers not meaningful",
                       (64, 16, 16), (64, 128), (60, 30), eval_every=(0, 10), seeds=(0,), analysis_images=16,
                       tsne_pixels_per_class=40,
                       sweep=SweepConfig(priors=(0.0, 1.0, 2.0), seeds=(0,), num_train=16, num_val=8, height=32,
                                         width=64, teacher_iterations=20, student_iterations=10)),
    # Calibrated (docs/datasets.md, "Calibration"): the teacher reaches >= 50 IoU on every class, the
    # baseline student > 10, and the teacher ships with the project (idd_lib/teachers/). Students train
    # in bf16 autocast as on CUDA: 1.7x the fp32 steps per second on an AVX512-BF16 CPU
    # (benchmarks/step_throughput.py), which keeps `make study` within 15 minutes on 2 cores.
    _synthetic_profile("default", "the embedded synthetic benchmark, CPU-sized (about 13 minutes on 2 cores)",
                       (240, 60, 60), (96, 192), (1500, 300), eval_every=(250, 100), student_cpu_amp=True,
                       seeds=(0, 1, 2, 3, 4)),
)}


# Paper-scale presets: real data in its own folder (data.root=...), the lineage's protocols
# (docs/method.md, "The protocol of the method family"; docs/baselines.md, "Reported numbers").
# Backbones start from the lineage's deep-stem ImageNet files (resnet18-imagenet.pth /
# resnet101-imagenet.pth, linked from the SKD and CIRKD READMEs) expected under pretrained/ in the project (a relative path is read from the
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


def study_profile(name: str, options: str = "") -> Profile:
    """A registered profile with the notebooks' ``options`` text applied (:meth:`Profile.configure`)."""
    return get_profile(name).configure(parse_assignments(options, "options"))
