"""Af-DCD: masked feature mimicking and the omni-contrastive loss on features (``afdcd``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AfDCDConfig, LossConfig
from .common import check_choice, to_size
from .registry import SearchSpace, TermDims, register_term


class EnhancedProjector(nn.Module):
    """Af-DCD's two-branch projector: two conv3x3-ReLU blocks in a row, each read out by its own
    conv3x3, the two read-outs averaged (``losses/ocmgd.py`` ``EnhancedProjector``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.block_2 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.adaptor_1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.adaptor_2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        x_1 = self.block_1(x)
        return (self.adaptor_1(x_1) + self.adaptor_2(self.block_2(x_1))) / 2


def contrast_groups(x: torch.Tensor, groups: int, patch: tuple[int, int]) -> torch.Tensor:
    """``B x C x H x W`` -> ``(B patches) x (positions x groups) x (C / groups)``: the map cut into
    ``patch`` tiles (rows and columns past the last whole tile dropped) and the channels into
    ``groups`` consecutive chunks; entry ``position * groups + group`` as Af-DCD's ``_to_ctr_format``."""
    b, c, h, w = x.shape
    ph, pw = patch
    x = x[:, :, :h // ph * ph, :w // pw * pw].reshape(b, groups, c // groups, h // ph, ph, w // pw, pw)
    return x.permute(0, 3, 5, 4, 6, 1, 2).reshape(-1, ph * pw * groups, c // groups)


@register_term("afdcd")
class AugmentationFreeDCD(nn.Module):
    r"""Af-DCD (Fan et al., *Augmentation-free Dense Contrastive Knowledge Distillation for
    Efficient Semantic Segmentation*, NeurIPS 2023), as OSVAI/Af-DCD ``losses/ocmgd.py``
    (``OmniContrastiveFeatureLoss``) computes it on the networks' features.

    The student's features are aligned to the teacher's width (1x1 conv with bias, when the widths
    differ), masked (``random``: each position dropped with probability ``mask_ratio``; ``centre``:
    the middle ninth) and projected back, :math:`\hat F = g(\mathrm{align}(F^S) \odot m)` (g:
    conv3x3-ReLU-conv3x3 at the teacher's width, or the ``enhanced`` two-branch projector). Then

    .. math:: L = \lambda_{fd}\,\frac1B\lVert \hat F - F^T\rVert_2^2
              + \lambda_{ctr}\,\frac{1}{B H' W'}\sum_{i}
              -\log\frac{e^{s_{ii}/\tau}}{e^{s_{ii}/\tau} + \sum_{j:\,g(j)\ne g(i)} e^{s_{ij}/\tau}}

    the contrastive part on both maps max-pooled by ``pool`` (to H' x W'), cut into ``patch`` x
    ``patch`` tiles and into M = ``groups`` channel chunks: within a tile every (position, chunk) of
    :math:`\hat F` is an anchor i, its positive the same (position, chunk) of the teacher, its
    negatives the teacher's entries of the *other* chunks at every position of the tile, similarity
    :math:`s_{ij} = -\lVert \hat F_i - F^T_j\rVert_1`, tau = 0.07.

    Defaults, from the Cityscapes scripts (``train_scripts/cityscape/*_ocmgd.sh``): lambda_fd = 2e-6,
    lambda_ctr = 0.005, with pixel-wise KD at weight 1 and CE; mask, ratio and projector are the
    code's defaults (random, 0.75, plain), which the MobileNetV2 script and every other dataset's
    script run with. The DeepLabV3-R18 script also passes ``--rand_mask False --enhance_projector True``,
    which its argument parser rejects (it defines ``--rand-mask``/``--enhance-projector``, and with
    ``type=bool`` any value would be True): the options ``afdcd.mask=centre`` and
    ``afdcd.projector=enhanced`` give what it meant.

    Differences from Af-DCD (docs/baselines.md, ``tests/test_parity.py``): the features are the
    head's pre-classifier maps (``feat``; Af-DCD takes the backbone's last stage), the student's
    map is resized to the teacher's when they differ, a map whose pooled size is no multiple of the
    patch is tiled as far as whole tiles go (a pooling kernel or patch side larger than the map shrinks
    to it; Af-DCD fails there), equal widths need no alignment (Af-DCD fails there), and the term's parameters
    are not gradient-clipped (Af-DCD clips them at norm 15).
    """

    search_space = SearchSpace(option="loss.afdcd.temperature", values=(0.035, 0.07, 0.14))

    def __init__(self, student_channels: int, teacher_channels: int, cfg: AfDCDConfig):
        super().__init__()
        check_choice(cfg.mask, ("random", "centre"), "afdcd.mask")
        check_choice(cfg.projector, ("plain", "enhanced"), "afdcd.projector")
        if teacher_channels % cfg.groups:
            raise ValueError(f"options: afdcd.groups={cfg.groups} must divide the teacher's feature width "
                             f"{teacher_channels}")
        self.cfg = cfg
        self.align = (nn.Identity() if student_channels == teacher_channels
                      else nn.Conv2d(student_channels, teacher_channels, 1))
        c = teacher_channels
        self.projector = (EnhancedProjector(c) if cfg.projector == "enhanced" else
                          nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
                                        nn.Conv2d(c, c, 3, padding=1)))

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> AugmentationFreeDCD:
        return cls(dims.student_channels, dims.teacher_channels, cfg.afdcd)

    def mask(self, f: torch.Tensor) -> torch.Tensor:
        b, _, h, w = f.shape
        if self.cfg.mask == "random":
            return (torch.rand(b, 1, h, w, device=f.device) <= 1 - self.cfg.mask_ratio).to(f.dtype)
        keep = torch.ones(b, 1, h, w, device=f.device, dtype=f.dtype)
        keep[:, :, h // 3:2 * h // 3, w // 3:2 * w // 3] = 0
        return keep

    def contrastive(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The omni-contrastive loss summed over anchors, divided by B H' W' (the tiled area)."""
        pool = min(self.cfg.pool, *preds.shape[-2:])       # a map smaller than the kernel: pooled to one row/column
        if pool:
            preds, targets = F.max_pool2d(preds, pool), F.max_pool2d(targets, pool)
        b, _, h, w = preds.shape
        patch = (min(self.cfg.patch, h), min(self.cfg.patch, w))
        m = self.cfg.groups
        s = contrast_groups(preds, m, patch)
        t = contrast_groups(targets, m, patch)
        logits = -torch.cdist(s, t, p=1) / self.cfg.temperature                     # N x L x L
        group = torch.arange(logits.shape[-1], device=logits.device) % m
        excluded = (group[:, None] == group[None, :]) & ~torch.eye(len(group), dtype=torch.bool, device=group.device)
        loss = torch.logsumexp(logits.masked_fill(excluded, float("-inf")), -1) - logits.diagonal(dim1=-2, dim2=-1)
        return loss.sum() / (b * (h // patch[0] * patch[0]) * (w // patch[1] * patch[1]))

    def parts(self, student_out, teacher_out, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature-mimicking and contrastive losses, unweighted."""
        f_t = teacher_out["feat"].detach().float()
        f_s = to_size(self.align(student_out["feat"].float()), f_t.shape[-2:])
        projected = self.projector(f_s * self.mask(f_s))
        return (projected - f_t).square().sum() / f_t.shape[0], self.contrastive(projected, f_t)

    def forward(self, student_out, teacher_out, labels):
        fd, ctr = self.parts(student_out, teacher_out, labels)
        return self.cfg.fd_weight * fd + self.cfg.ctr_weight * ctr
