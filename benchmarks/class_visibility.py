"""How visible each class of the embedded benchmark is to a network of output stride 8, per class.

For every class: its share of labelled pixels, the share of images it appears in, and the
**stride oracle IoU**: the IoU of the best prediction a network could make from a map ``stride``
times coarser than the image when it knows the exact class mix of every feature cell (the one-hot
labels average-pooled over each cell, upsampled bilinearly as the networks' logits are, argmax).
A class whose objects are thinner than a feature cell scores near 0 here, whatever the network;
trained teachers reach a share of this bound that grows with the class's pixel share. This is the
measurement behind the benchmark's ``object_scale`` (docs/datasets.md, "Calibration").

    .venv/bin/python benchmarks/class_visibility.py                                  # default profile
    .venv/bin/python benchmarks/class_visibility.py --options data.synthetic.object_scale=1
    .venv/bin/python benchmarks/class_visibility.py --profile quick --stride 8 --images 60
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from idd_lib.data.synthetic import LABEL_ID_TO_TRAIN_ID, SYNTH_CLASSES, render_item
from idd_lib.presets import study_profile


def train_ids(cfg, split: str, images: int) -> torch.Tensor:
    """The first ``images`` label maps of ``split`` as train ids (ignore = 255)."""
    return torch.from_numpy(np.stack([LABEL_ID_TO_TRAIN_ID[render_item(cfg, split, i)[1]] for i in range(images)]))


def visibility(labels: torch.Tensor, num_classes: int, stride: int) -> dict[str, list[float]]:
    """Per class: % of labelled pixels, % of images, stride oracle IoU (%)."""
    labels = labels.long()
    valid = labels < num_classes
    one_hot = F.one_hot(labels.clamp(max=num_classes), num_classes + 1).permute(0, 3, 1, 2).float()[:, :num_classes]
    cells = F.avg_pool2d(one_hot, stride, ceil_mode=True)
    oracle = F.interpolate(cells, size=labels.shape[1:], mode="bilinear", align_corners=False).argmax(1)
    classes = torch.arange(num_classes)[:, None, None, None]
    truth, predicted = (labels == classes) & valid, (oracle == classes) & valid
    inter = (truth & predicted).flatten(1).sum(1)
    union = (truth | predicted).flatten(1).sum(1).clamp(min=1)
    return {"pixel_share": (100 * truth.flatten(1).sum(1) / valid.sum()).tolist(),
            "image_share": (100 * truth.flatten(2).any(2).float().mean(1)).tolist(),
            "stride_oracle_iou": (100 * inter / union).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--options", default="", help="profile options, e.g. data.synthetic.object_scale=1")
    parser.add_argument("--stride", type=int, default=8, help="the networks' output stride")
    parser.add_argument("--images", type=int, default=60, help="validation images measured")
    parser.add_argument("--out", default="", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    synthetic = study_profile(args.profile, args.options).data.synthetic
    numbers = visibility(train_ids(synthetic, "val", args.images), len(SYNTH_CLASSES), args.stride)
    print(f"{synthetic.height}x{synthetic.width}, object_scale {synthetic.object_scale:g}, stride {args.stride}, "
          f"{args.images} val images")
    print(f"{'class':>13} {'% pixels':>9} {'% images':>9} {'oracle IoU':>11}")
    for k, (name, *_) in enumerate(SYNTH_CLASSES):
        print(f"{name:>13} {numbers['pixel_share'][k]:9.2f} {numbers['image_share'][k]:9.0f} "
              f"{numbers['stride_oracle_iou'][k]:11.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), **numbers}, indent=2) + "\n")


if __name__ == "__main__":
    main()
