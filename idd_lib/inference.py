"""Prediction for evaluation: whole image (the lineage's protocol), sliding window, multi-scale + flip.

``predict`` returns class scores at the label size; with one scale, no flip and ``whole`` they are
the model's logits upsampled (what single-scale evaluation always did), otherwise the average of
the softmax probabilities over scales and flips (mmseg's test-time augmentation).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import EvalConfig


def check_eval_config(cfg: EvalConfig) -> None:
    if cfg.mode not in ("whole", "slide"):
        raise ValueError(f"options: train.eval.mode must be 'whole' or 'slide', got {cfg.mode!r}")
    if not cfg.scales or any(s <= 0 for s in cfg.scales):
        raise ValueError(f"options: train.eval.scales must be positive factors, got {cfg.scales}")
    if min(cfg.crop_size) < 1 or min(cfg.stride) < 1:
        raise ValueError(f"options: train.eval.crop_size and stride must be >= 1, got {cfg.crop_size}, {cfg.stride}")


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    logits = model(images)["out"].float()
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def sliding_logits(model: nn.Module, images: torch.Tensor, crop: tuple[int, int],
                   stride: tuple[int, int]) -> torch.Tensor:
    """Logits at image size averaged over overlapping ``crop`` windows (the image zero-padded to
    at least one window; windows at the far edge are shifted inwards, as in mmseg's slide mode)."""
    h, w = images.shape[-2:]
    ch, cw = min(crop[0], h), min(crop[1], w)
    rows = max(math.ceil((h - ch) / stride[0]), 0) + 1
    cols = max(math.ceil((w - cw) / stride[1]), 0) + 1
    total, count = None, images.new_zeros(1, 1, h, w)
    for i in range(rows):  # a loop over windows, never over pixels
        for j in range(cols):
            y, x = min(i * stride[0], h - ch), min(j * stride[1], w - cw)
            window = _logits(model, images[..., y:y + ch, x:x + cw])
            if total is None:
                total = images.new_zeros(images.shape[0], window.shape[1], h, w)
            total[..., y:y + ch, x:x + cw] += window
            count[..., y:y + ch, x:x + cw] += 1
    return total / count


def predict(model: nn.Module, images: torch.Tensor, size: tuple[int, int], cfg: EvalConfig | None = None) -> torch.Tensor:
    """Class scores ``B x K x H x W`` at ``size`` (the labels' size) under the evaluation options."""
    cfg = cfg or EvalConfig()
    single = cfg.mode == "whole" and tuple(cfg.scales) == (1.0,) and not cfg.flip
    if single:
        logits = model(images)["out"].float()
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    probs = None
    for scale in cfg.scales:
        scaled = images if scale == 1.0 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                           align_corners=False)
        for flip in (False, True) if cfg.flip else (False,):
            x = scaled.flip(-1) if flip else scaled
            logits = sliding_logits(model, x, cfg.crop_size, cfg.stride) if cfg.mode == "slide" else _logits(model, x)
            if flip:
                logits = logits.flip(-1)
            p = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1)
            probs = p if probs is None else probs + p
    return probs / (len(cfg.scales) * (2 if cfg.flip else 1))
