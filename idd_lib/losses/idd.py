"""IDD (``idd``), our reconstruction of inter-class distance distillation (docs/method.md).

The distance matrices of class centres, and the loss matching the student's to the teacher's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import IDDConfig, LossConfig
from .common import check_choice, class_centres, class_weights, pairwise_distances, to_size
from .registry import SearchSpace, TermDims, register_term


def interclass_distance_matrix(features, weights, cfg: IDDConfig):
    """Distance matrices and the mask of present class pairs (i < j), steps 1-5 of the IDD loss in docs/method.md.

    ``weights`` are the class weights (:func:`class_weights`) at the size the matrices are computed
    at, so one labelling serves both networks; features are resized to it bilinearly. Returns ``D``
    (B' x K x K; B' = 1 for per-batch centres) and ``pair_mask`` (bool, same shape).
    """
    num_classes, size = weights.shape[1], weights.shape[-2:]
    features = to_size(features, size)
    if cfg.centres == "per-batch":
        weights = weights.transpose(0, 1).reshape(1, num_classes, -1, size[1])
        features = features.transpose(0, 1).reshape(1, features.shape[1], -1, size[1])
    centres, mass = class_centres(features.float(), weights)
    present = mass >= cfg.min_pixels
    upper = torch.ones(num_classes, num_classes, dtype=torch.bool, device=features.device).triu(1)
    pair_mask = present[:, :, None] & present[:, None, :] & upper
    distances = pairwise_distances(centres, cfg.metric)
    if cfg.normalize == "mean":
        mean = (distances * pair_mask).sum((1, 2)) / pair_mask.sum((1, 2)).clamp_min(1)
        distances = distances / mean.clamp_min(1e-6)[:, None, None]
    return distances, pair_mask


@register_term("idd")
class InterClassDistanceLoss(nn.Module):
    r"""IDD: match the student's inter-class distance matrix to the teacher's (docs/method.md).

    .. math::
        c_{bk} = \frac{\sum_p 1[y_{bp}=k] f_{bp}}{\sum_p 1[y_{bp}=k]},\quad
        D_b[i,j] = \lVert c_{bi} - c_{bj}\rVert_2 \,/\, \overline{D_b},\quad
        L = \operatorname{mean}_{b}\ \operatorname{mean}_{i<j\ \text{present}}
            \big(D^T_b[i,j] - D^S_b[i,j]\big)^2

    over images with at least two present classes; the teacher is a constant. Student features
    are resized to the teacher's spatial size. Both matrices are K x K, so no channel adapter is
    needed. Options (``IDDConfig``): label sampling, per-image/per-batch centres, metric,
    normalisation, penalty - the study's ablations.
    """

    search_space = SearchSpace()  # the weight only: no temperature

    def __init__(self, num_classes: int, cfg: IDDConfig):
        super().__init__()
        check_choice(cfg.label_sampling, ("nearest", "soft"), "idd.label_sampling")
        check_choice(cfg.centres, ("per-image", "per-batch"), "idd.centres")
        check_choice(cfg.metric, ("euclidean", "cosine", "sqeuclidean"), "idd.metric")
        check_choice(cfg.normalize, ("mean", "none"), "idd.normalize")
        check_choice(cfg.penalty, ("squared", "smooth-l1"), "idd.penalty")
        self.num_classes, self.cfg = num_classes, cfg

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> InterClassDistanceLoss:
        return cls(dims.num_classes, cfg.idd)

    def forward(self, student_out, teacher_out, labels):
        f_t = teacher_out["feat"].detach()
        weights = class_weights(labels, self.num_classes, f_t.shape[-2:], self.cfg.label_sampling)
        d_t, mask = interclass_distance_matrix(f_t, weights, self.cfg)
        d_s, _ = interclass_distance_matrix(student_out["feat"], weights, self.cfg)
        if self.cfg.penalty == "smooth-l1":
            penalty = F.smooth_l1_loss(d_s, d_t, reduction="none")
        else:
            penalty = (d_t - d_s).square()
        pairs = mask.sum((1, 2))
        per_image = (penalty * mask).sum((1, 2)) / pairs.clamp_min(1)
        has_pairs = (pairs > 0).to(per_image.dtype)
        return (per_image * has_pairs).sum() / has_pairs.sum().clamp_min(1)
