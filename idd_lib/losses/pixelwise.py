"""The task loss ``ce`` (cross-entropy + auxiliary head) and pixel-wise KD on logits ``kd``."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..config import KDConfig, LossConfig
from .common import IGNORE_INDEX, resize_labels, softmax_kl, to_size
from .registry import SearchSpace, TermDims, register_term


@register_term("ce")
class SegmentationCE(nn.Module):
    r""":math:`L = CE(\uparrow z^S, y) + \lambda_{aux} CE(\uparrow z^S_{aux}, y)`, logits upsampled
    bilinearly to the label size, ignore index 255, mean over valid pixels (torchvision reference)."""

    def __init__(self, aux_weight: float = 0.4):
        super().__init__()
        self.aux_weight = aux_weight

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> SegmentationCE:
        return cls(cfg.aux_weight)

    def forward(self, student_out, teacher_out, labels):
        loss = self._ce(student_out["out"], labels)
        if "aux" in student_out and self.aux_weight > 0:
            loss = loss + self.aux_weight * self._ce(student_out["aux"], labels)
        return loss

    @staticmethod
    def _ce(logits, labels):
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


@register_term("kd")
class PixelwiseKD(nn.Module):
    r"""Pixel-wise KD on logits at feature resolution:

    .. math:: L = \frac{T^2}{|V|} \sum_{p \in V} \mathrm{KL}\big(\sigma(z^T_p/T)\,\Vert\,\sigma(z^S_p/T)\big)

    with V the non-ignored pixels (labels sampled nearest to the logit size). Student logits are
    resized to the teacher's if they differ. On V this is CIRKD's ``CriterionKD`` (weight 1);
    IFVD's ``CriterionKD`` is ours / C, SKD's ``CriterionPixelWise`` N x (ours + the teacher's
    entropy) (``tests/test_parity.py``).

    Deliberate difference: CIRKD, IFVD and SKD distil *every* pixel, ignored ones included; ours
    masks them, so theirs = labelled share x ours + ignored share x the ignored pixels' mean KL
    (``test_parity.py::test_kd_masks_ignored_pixels_where_the_peers_distil_all``).
    """

    search_space = SearchSpace(option="loss.kd.temperature", values=(0.5, 1.0, 2.0))

    def __init__(self, cfg: KDConfig):
        super().__init__()
        if not cfg.temperature > 0:
            raise ValueError(f"options: kd.temperature must be > 0, got {cfg.temperature}")
        self.temperature = cfg.temperature

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> PixelwiseKD:
        return cls(cfg.kd)

    def forward(self, student_out, teacher_out, labels):
        z_t = teacher_out["out"].detach().float()
        z_s = student_out["out"].float()
        z_s = to_size(z_s, z_t.shape[-2:])
        t = self.temperature
        kl = softmax_kl(z_t / t, z_s / t, dim=1)
        valid = (resize_labels(labels, z_t.shape[-2:]) != IGNORE_INDEX).to(kl.dtype)
        return t * t * (kl * valid).sum() / valid.sum().clamp_min(1)
