"""The loss terms of the study, one small module per family, and the method registry.

Every term has the signature ``term(student_out, teacher_out, labels) -> scalar`` where the
``*_out`` dicts come from :class:`~idd_lib.models.Segmentor` (``out``, ``aux``, ``feat``) and
``labels`` is ``B x H x W`` with ignore index 255 (terms with ``uses_images`` also get
``images=``). Teacher outputs are always treated as constants. Nothing here loops over pixels,
classes or images, and nothing synchronises with the host (except the CIRKD memory's enqueue),
so the terms are cheap inside a GPU step. :class:`DistillationCriterion` computes every term in
fp32, outside the networks' bf16 autocast.

Where things are:

* :mod:`.common`: ignore index, resizing, class weights and centres, distances, softmax KL;
* :mod:`.pixelwise`: ``ce`` (cross-entropy + auxiliary head) and ``kd`` (pixel-wise KD);
* :mod:`.idd` and :mod:`.pid`: our reconstruction of the paper's two terms (docs/method.md);
* the baselines by family (docs/baselines.md): :mod:`.skd` ``pa``, :mod:`.adversarial` ``ho``,
  :mod:`.ifvd` ``ifv``, :mod:`.cwd` ``cwd``/``cwd-feat``, :mod:`.cirkd` ``cirkd-mb``/``cirkd-mem``,
  and those published since: :mod:`.dist` ``dist``, :mod:`.bpkd` ``bpkd``, :mod:`.afdcd` ``afdcd``
  and :mod:`.pixelwise` ``kd-ls`` (KD on standardised logits);
* :mod:`.registry`: :func:`register_term` (each term class registers itself with it),
  :data:`METHODS` (every method's terms and default weights) and :class:`DistillationCriterion`.

Normalisation convention: pixel terms are means over valid (non-ignored) pixels. So our ``kd``
weight 1 equals CIRKD's ``lambda_kd=1``; IFVD's/SKD's ``lambda=10`` with ``nn.KLDivLoss()``
means 10/C per pixel (0.53 on Cityscapes), SKD's pixel-wise term 10N.
"""
# importing the term modules registers their terms with the registry
from .adversarial import Discriminator, HolisticAdversarialLoss
from .afdcd import AugmentationFreeDCD
from .bpkd import BoundaryPrivilegedKD, edge_masks
from .cirkd import CrossImageMemoryLoss, CrossImagePixelLoss
from .common import (IGNORE_INDEX, check_choice, class_centres, class_weights, pairwise_distances, resize_labels,
                     softmax_kl, to_size)
from .cwd import ChannelWiseDistillation
from .dist import DISTLoss
from .idd import InterClassDistanceLoss, interclass_distance_matrix
from .ifvd import IntraClassFeatureVariationLoss
from .pid import PositionDistillation, position_readout, position_targets
from .pixelwise import PixelwiseKD, SegmentationCE, StandardizedKD
from .registry import (METHODS, TEACHER_FREE_TERMS, TERM_BUILDERS, TERM_SEARCH, DistillationCriterion, Method,
                       SearchSpace, TermDims, get_method, method_weights, register_term)
from .skd import PairwiseAffinityLoss

__all__ = [
    "METHODS", "TEACHER_FREE_TERMS", "TERM_BUILDERS", "TERM_SEARCH", "DistillationCriterion", "Method",
    "SearchSpace", "TermDims", "get_method", "method_weights", "register_term",
    "Discriminator", "HolisticAdversarialLoss", "CrossImageMemoryLoss", "CrossImagePixelLoss",
    "IGNORE_INDEX", "check_choice", "class_centres", "class_weights", "pairwise_distances", "resize_labels",
    "softmax_kl", "to_size", "ChannelWiseDistillation", "InterClassDistanceLoss", "interclass_distance_matrix",
    "IntraClassFeatureVariationLoss", "PositionDistillation", "position_readout", "position_targets",
    "PixelwiseKD", "SegmentationCE", "PairwiseAffinityLoss",
    "AugmentationFreeDCD", "BoundaryPrivilegedKD", "edge_masks", "DISTLoss", "StandardizedKD",
]
