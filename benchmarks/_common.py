"""Arguments shared by the benchmark scripts: the profile and its batch/crop overrides."""
from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F

from idd_lib.config import DataConfig, LossConfig, Profile, apply_overrides, parse_assignments
from idd_lib.presets import get_profile
from idd_lib.losses import DistillationCriterion


def add_size_arguments(parser: argparse.ArgumentParser, profile: str) -> None:
    parser.add_argument("--profile", default=profile)
    parser.add_argument("--batch", type=int, default=0, help="override the profile's batch")
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="override the profile's crop")
    parser.add_argument("--loss-options", default="", metavar="KEY=VALUE,...",
                        help="loss options as in training without the 'loss.' prefix, e.g. pid.hidden=0")


def image_size(data: DataConfig) -> tuple[int, int]:
    """The benchmarked (h, w): the training crop, else the whole synthetic image."""
    return tuple(data.crop_size or (data.synthetic.height, data.synthetic.width))


def sized_profile(args: argparse.Namespace) -> Profile:
    profile = get_profile(args.profile)
    data = profile.data
    if args.batch:
        data = dataclasses.replace(data, batch_size=args.batch)
    if args.crop:
        data = dataclasses.replace(data, crop_size=tuple(args.crop))
    return dataclasses.replace(profile, data=data)


def loss_config(args: argparse.Namespace, method: str, weights: tuple[tuple[str, float], ...] = ()) -> LossConfig:
    """The method's loss config with ``--loss-options`` applied; a bad option stops with one line."""
    try:
        return apply_overrides(LossConfig(method, weights=weights), parse_assignments(args.loss_options, "--loss-options"))
    except ValueError as err:
        raise SystemExit(f"--loss-options: {err}") from None


def ready_for_timing(criterion: DistillationCriterion, teacher_out: dict) -> DistillationCriterion:
    """Terms fitted before training (``pid.teacher_fit=prefit``) get one fit step on the benchmark
    batch: the timed step needs them fitted, not fitted well."""
    for term in criterion.pending_prefits().values():
        term.prefit([teacher_out])
    return criterion


def random_batch(profile: Profile, num_classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels of the profile's batch and crop. Labels come in 16x16-pixel blocks
    (classes form regions, as in a real label map) and the top 8 rows are ignored (255)."""
    h, w = image_size(profile.data)
    batch = profile.data.batch_size
    images = torch.randn(batch, 3, h, w, device=device)
    blocks = torch.randint(0, num_classes, (batch, 1, -(-h // 16), -(-w // 16)), device=device)
    labels = F.interpolate(blocks.float(), scale_factor=16, mode="nearest")[:, 0, :h, :w].long()
    labels[:, :8] = 255
    return images, labels
