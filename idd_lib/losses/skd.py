"""SKD's pair-wise term (``pa``): the cosine-affinity graph of pooled head-feature nodes.

SKD's holistic (adversarial) term is in :mod:`idd_lib.losses.adversarial`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig, PairwiseConfig
from .common import check_choice, to_size
from .registry import SearchSpace, TermDims, register_term


@register_term("pa")
class PairwiseAffinityLoss(nn.Module):
    r"""SKD pair-wise distillation: match the cosine-affinity graph of head-feature nodes.

    .. math:: a_{ij} = \frac{f_i^\top f_j}{\lVert f_i\rVert\lVert f_j\rVert},\qquad
              L = \operatorname{mean}_{b,i,j}\big(a^T_{bij} - a^S_{bij}\big)^2

    over the nodes of max-pooled head features, one graph per image (a batched matmul). The graph
    has ``n x n`` entries whatever the channel counts, so no adapter is needed. Variants
    (``loss.pa.variant``, docs/baselines.md):

    * ``cirkd`` (default; CIRKD ``losses/skd.py``): 2x2 max-pool (``ceil_mode``), ``F.normalize``;
      weight 10 in CIRKD's SKD runs (``train_skd.sh``).
    * ``skd`` (official SKD ``sim_dis_compute`` with ``CriterionPairWiseforWholeFeatAfterPool``):
      kernel = ``int(pool_scale x size)`` (a 2x2-3x3 graph at scale 0.5), the norm detached;
      weight 0.5 in SKD's ``run_train_val.sh``.

    Both papers' losses are already means over (b, i, j), so their weights need no conversion.
    """

    search_space = SearchSpace()  # the weight only: no temperature

    def __init__(self, cfg: PairwiseConfig):
        super().__init__()
        check_choice(cfg.variant, ("cirkd", "skd"), "pa.variant")
        if not 0 < cfg.pool_scale <= 1:
            raise ValueError(f"options: pa.pool_scale must be in (0, 1], got {cfg.pool_scale}")
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> PairwiseAffinityLoss:
        return cls(cfg.pa)

    def affinity(self, features: torch.Tensor) -> torch.Tensor:
        """``B x C x h x w -> B x n x n`` cosine affinities of the pooled nodes."""
        h, w = features.shape[-2:]
        if self.cfg.variant == "skd":
            kernel = (max(1, int(h * self.cfg.pool_scale)), max(1, int(w * self.cfg.pool_scale)))
        else:
            kernel = (2, 2)
        nodes = F.max_pool2d(features, kernel, kernel, ceil_mode=True).flatten(2)
        if self.cfg.variant == "skd":
            nodes = nodes / (nodes.norm(dim=1, keepdim=True).detach() + 1e-8)
        else:
            nodes = F.normalize(nodes, dim=1)
        return nodes.transpose(1, 2) @ nodes

    def forward(self, student_out, teacher_out, labels):
        f_t = teacher_out["feat"].detach().float()
        f_s = to_size(student_out["feat"].float(), f_t.shape[-2:])
        return (self.affinity(f_t) - self.affinity(f_s)).square().mean()
