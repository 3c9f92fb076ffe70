"""DIST: inter- and intra-class Pearson relations of the predictions (``dist``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DISTConfig, LossConfig
from .common import to_size
from .registry import SearchSpace, TermDims, register_term


def pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    r""":math:`1 - \frac{1}{R}\sum_r \rho(a_r, b_r)`: one minus the mean Pearson correlation of the
    rows of two ``R x n`` matrices (centred cosine, ``eps`` added to the norms' product as DIST_KD)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return 1 - ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)).mean()


@register_term("dist")
class DISTLoss(nn.Module):
    r"""DIST (Huang et al., *Knowledge Distillation from a Stronger Teacher*, NeurIPS 2022):
    match the *relations* of the class distributions rather than the distributions.

    With :math:`P^S, P^T \in \mathbb R^{n \times K}` the softmax (over classes, at temperature tau)
    of every pixel of the batch (n = B h w rows),

    .. math:: L = \tau^2\Big[\beta\,\big(1 - \tfrac1n\textstyle\sum_p \rho(P^S_{p,:}, P^T_{p,:})\big)
              + \gamma\,\big(1 - \tfrac1K\textstyle\sum_k \rho(P^S_{:,k}, P^T_{:,k})\big)\Big]

    rho the Pearson correlation: inter-class (each pixel's distribution over the classes) and
    intra-class (each class's probabilities over all pixels of the batch). Defaults beta = gamma = 1,
    tau = 1, weight 1: hunto/DIST_KD ``segmentation/losses/dist_kd.py`` ``DIST()`` with
    ``--lambda-kd 1`` in ``train_scripts/train_kd/{deeplabv3,pspnet}_res18.sh``, CE as the task loss.
    **Difference:** DIST_KD's trainer forces ``--aux`` on for ResNet students and adds 0.4 x the same
    loss on the auxiliary logits; our teachers run in eval mode without their auxiliary output, so
    only the main logits are distilled (``benchmarks/dist_aux_share.py`` measures what that leaves out). Like DIST_KD it uses no labels: every pixel is a row, ignored ones included. The student's
    logits are resized to the teacher's when they differ (DIST_KD's networks share one output size).
    tau is the classification code's (``tau**2`` times both relations); the segmentation code has none.
    ``tests/test_parity.py`` checks the term against DIST_KD's computation.
    """

    search_space = SearchSpace(option="loss.dist.temperature", values=(0.5, 1.0, 2.0))

    def __init__(self, cfg: DISTConfig):
        super().__init__()
        if not cfg.temperature > 0:
            raise ValueError(f"options: dist.temperature must be > 0, got {cfg.temperature}")
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> DISTLoss:
        return cls(cfg.dist)

    def forward(self, student_out, teacher_out, labels):
        z_t = teacher_out["out"].detach().float()
        z_s = to_size(student_out["out"].float(), z_t.shape[-2:])
        tau = self.cfg.temperature
        p_s = F.softmax(z_s / tau, dim=1).transpose(0, 1).flatten(1)       # K x n
        p_t = F.softmax(z_t / tau, dim=1).transpose(0, 1).flatten(1)
        inter = pearson_distance(p_s.T, p_t.T)
        intra = pearson_distance(p_s, p_t)
        return tau * tau * (self.cfg.beta * inter + self.cfg.gamma * intra)
