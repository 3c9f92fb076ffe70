"""IFVD's intra-class feature variation term (``ifv``).

Each pixel's cosine similarity to its class centre, matched between student and teacher.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig
from .common import class_centres, class_weights, to_size
from .registry import SearchSpace, TermDims, register_term


@register_term("ifv")
class IntraClassFeatureVariationLoss(nn.Module):
    r"""IFVD: per pixel, the cosine similarity of its head feature to its class centre in the image.

    .. math:: c_{bk} = \frac{\sum_p 1[y_{bp}=k] f_{bp}}{\sum_p 1[y_{bp}=k]},\quad
              M_{bp} = \cos(f_{bp}, c_{b y_{bp}}),\quad
              L = \frac{1}{|V|}\sum_{p\in V}(M^S_p - M^T_p)^2

    labels nearest-sampled to the feature size, V the labelled pixels. Centres are one batched
    matmul, the painting of each pixel with its centre another (IFVD loops over classes). M is a
    scalar per pixel, so student and teacher widths may differ without an adapter.

    Weight 200 (IFVD's ``lambda_ifv``; CIRKD's runs use 20). IFVD averages over *all* pixels,
    where unlabelled ones keep their own feature (cos = 1 for both, difference 0): the same sum,
    divided by all pixels instead of the labelled ones - our value is theirs / (labelled fraction)
    (``tests/test_parity.py::test_ifv_is_ifvd_divided_by_the_labelled_share``).
    """

    search_space = SearchSpace()  # the weight only: no temperature

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> IntraClassFeatureVariationLoss:
        return cls(dims.num_classes)

    def similarity_map(self, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        centres, _ = class_centres(features, weights)
        painted = torch.einsum("bkc,bkhw->bchw", centres, weights)
        return F.cosine_similarity(features, painted, dim=1)

    def forward(self, student_out, teacher_out, labels):
        f_t = teacher_out["feat"].detach().float()
        f_s = to_size(student_out["feat"].float(), f_t.shape[-2:])
        weights = class_weights(labels, self.num_classes, f_t.shape[-2:])
        diff = (self.similarity_map(f_s, weights) - self.similarity_map(f_t, weights)).square()
        valid = weights.sum(1)
        return (diff * valid).sum() / valid.sum().clamp_min(1)
