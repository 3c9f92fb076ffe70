"""The task loss ``ce`` (cross-entropy + auxiliary head), pixel-wise KD on logits ``kd`` and its
logit-standardised variant ``kd-ls``."""
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

    def __init__(self, cfg: KDConfig, name: str = "kd"):
        super().__init__()
        if not cfg.temperature > 0:
            raise ValueError(f"options: {name}.temperature must be > 0, got {cfg.temperature}")
        self.temperature = cfg.temperature

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> PixelwiseKD:
        return cls(cfg.kd)

    def forward(self, student_out, teacher_out, labels):
        z_t = self.prepare(teacher_out["out"].detach().float())
        z_s = self.prepare(to_size(student_out["out"].float(), teacher_out["out"].shape[-2:]))
        t = self.temperature
        kl = softmax_kl(z_t / t, z_s / t, dim=1)
        valid = (resize_labels(labels, z_t.shape[-2:]) != IGNORE_INDEX).to(kl.dtype)
        return t * t * (kl * valid).sum() / valid.sum().clamp_min(1)

    @staticmethod
    def prepare(logits):
        """What the logits are before the softmax: unchanged here, standardised in :class:`StandardizedKD`."""
        return logits


@register_term("kd-ls")
class StandardizedKD(PixelwiseKD):
    r"""KD with logit standardisation (Sun et al., *Logit Standardization in Knowledge
    Distillation*, CVPR 2024): :class:`PixelwiseKD` on each pixel's Z-scored logits,

    .. math:: \mathcal Z(z_p) = \frac{z_p - \bar z_p}{\epsilon + \mathrm{std}(z_p)},\qquad
              L = \frac{T^2}{|V|}\sum_{p \in V}\mathrm{KL}\big(\sigma(\mathcal Z(z^T_p)/T)\,\Vert\,
              \sigma(\mathcal Z(z^S_p)/T)\big)

    mean and (unbiased, ``torch.std``) standard deviation over the classes, epsilon = 1e-7 added to
    the deviation, as ``normalize`` in sunshangquan/logit-standardization-KD
    ``mdistiller/distillers/KD.py``. Teacher and student are standardised separately, so the
    student matches the teacher's logit *relations*, not their range.

    Defaults: T = 2 (``--base-temp 2``), weight 9 (``--kd-weight 9``) and CE weight 0.1 (mdistiller's
    ``CFG.KD.LOSS.CE_WEIGHT``): the authors' ``KD+Ours`` command for CIFAR-100 (ResNet32x4 ->
    ResNet8x4) in their README. The authors publish no segmentation recipe; this is their
    classification one applied per pixel. Per pixel it equals their ``kd_loss`` on the labelled
    pixels as rows (their ``.sum(1).mean()``); the ignored pixels are left out, as in ``kd``
    (``tests/test_parity.py``).
    """

    search_space = SearchSpace(option="loss.kd_ls.temperature", values=(1.0, 2.0, 4.0))
    eps = 1e-7

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> StandardizedKD:
        return cls(cfg.kd_ls, "kd_ls")

    @classmethod
    def prepare(cls, logits):
        return (logits - logits.mean(1, keepdim=True)) / (cls.eps + logits.std(1, keepdim=True))
