"""Helpers shared by the loss terms: ignore index, resizing, class weights/centres, distances, KL.

Everything here is vectorised over images, classes and pixels (batched matrix products, no
Python loops), so the terms built on it stay cheap inside a GPU step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "check_choice", "class_centres", "class_weights", "pairwise_distances",
           "resize_labels", "softmax_kl", "to_size"]


def check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    """An option value among its allowed ``choices``, else a one-line error naming the option."""
    if value not in choices:
        raise ValueError(f"options: {name} must be one of {list(choices)}, got {value!r}")


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour label sampling ``B x H x W -> B x h x w`` (keeps the ignore index)."""
    if labels.shape[-2:] == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def to_size(x: torch.Tensor, size) -> torch.Tensor:
    """Student maps are brought to the teacher's spatial size (bilinear) before comparing."""
    return x if x.shape[-2:] == tuple(size) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def class_weights(labels: torch.Tensor, num_classes: int, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Per-pixel class membership ``B x K x h x w`` at feature size; ignored pixels belong to no class.

    ``nearest``: one-hot of nearest-sampled labels. ``soft``: the fraction of each feature cell's
    label pixels that belong to class k (area-weighted one-hot).
    """
    if mode == "nearest":
        labels = resize_labels(labels, size)
    valid = labels != IGNORE_INDEX
    one_hot = F.one_hot(torch.where(valid, labels, num_classes), num_classes + 1)[..., :num_classes]
    one_hot = one_hot.permute(0, 3, 1, 2).float()
    if mode == "soft" and one_hot.shape[-2:] != tuple(size):
        one_hot = F.interpolate(one_hot, size=size, mode="area")
    return one_hot


def class_centres(features: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked means ``c_bk = sum_p w_bkp f_bp / sum_p w_bkp`` as one batched matmul.

    features ``B x C x h x w``, weights ``B x K x h x w`` -> centres ``B x K x C``, mass ``B x K``.
    """
    weights = weights.to(features.dtype).flatten(2)
    mass = weights.sum(-1)
    sums = torch.bmm(weights, features.flatten(2).transpose(1, 2))
    return sums / mass.clamp_min(1e-6)[..., None], mass


def pairwise_distances(centres: torch.Tensor, metric: str) -> torch.Tensor:
    """``B x K x C -> B x K x K``: euclidean (cdist), squared euclidean, or cosine ``1 - cos``."""
    if metric == "cosine":
        unit = F.normalize(centres, dim=-1)
        return 1.0 - unit @ unit.transpose(1, 2)
    if metric == "sqeuclidean":
        return torch.cdist(centres, centres).square()
    return torch.cdist(centres, centres)


def softmax_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, dim: int) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\sigma(t)\,\Vert\,\sigma(s)) = \sum p_t (\log p_t - \log p_s)` along ``dim``
    (the softmax axis), one value per remaining position; the caller scales and reduces it."""
    log_p_t = F.log_softmax(teacher_logits, dim=dim)
    return (log_p_t.exp() * (log_p_t - F.log_softmax(student_logits, dim=dim))).sum(dim)
