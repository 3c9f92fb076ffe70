"""CIRKD's cross-image terms: mini-batch (``cirkd-mb``) and memory-based (``cirkd-mem``).

Mini-batch: pixel-to-pixel similarities across the images of the batch; memory: pixel-to-pixel
and pixel-to-region similarities to queues of teacher embeddings.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..config import CIRKDConfig, LossConfig
from .common import IGNORE_INDEX, check_choice, class_centres, class_weights, resize_labels, softmax_kl, to_size
from .registry import SearchSpace, TermDims, register_term


@register_term("cirkd-mb")
class CrossImagePixelLoss(nn.Module):
    r"""CIRKD mini-batch pixel-to-pixel distillation: pixel similarities *across* the images of
    the batch, as distributions over the other image's pixels.

    .. math:: S_{ij} = \hat F_i^\top \hat F_j \in \mathbb R^{n\times n}\ (\text{L2-normalised head features}),\qquad
              L = \frac{1}{B^2}\sum_{i,j}\frac{1}{n}\sum_{m}
              \mathrm{KL}\big(\sigma(S^T_{ij,m}/\tau)\,\Vert\,\sigma(S^S_{ij,m}/\tau)\big)

    all B^2 pairs in one batched product (CIRKD loops over pairs), tau = 0.1, weight 1
    (``losses/cirkd_mini_batch.py``, ``train_cirkd.py``). ``minibatch_pool`` = 2 gives the CVPR
    version's 2x2 average pooling (off by default in CIRKD). Memory is ``B^2 n^2``: at the paper
    scale (n = 64 x 64 at 512x512) pool, as CIRKD's 2-images-per-GPU runs did not need to.
    "Cross-image" spans the local batch only, as in CIRKD without its ``GatherLayer``.
    """

    search_space = SearchSpace(option="loss.cirkd.temperature", values=(0.05, 0.1, 0.2))

    def __init__(self, cfg: CIRKDConfig):
        super().__init__()
        if not cfg.temperature > 0 or cfg.minibatch_pool < 1:
            raise ValueError("options: cirkd.temperature must be > 0 and cirkd.minibatch_pool >= 1")
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> CrossImagePixelLoss:
        return cls(cfg.cirkd)

    def _nodes(self, features: torch.Tensor) -> torch.Tensor:
        k = self.cfg.minibatch_pool
        if k > 1:
            features = F.avg_pool2d(features, k, k, ceil_mode=True)
        return F.normalize(features.flatten(2), dim=1)                 # B x C x n

    def forward(self, student_out, teacher_out, labels):
        f_t = teacher_out["feat"].detach().float()
        f_s = to_size(student_out["feat"].float(), f_t.shape[-2:])
        n_t, n_s = self._nodes(f_t), self._nodes(f_s)
        tau = self.cfg.temperature
        s_t = torch.einsum("icm,jcn->ijmn", n_t, n_t) / tau
        s_s = torch.einsum("icm,jcn->ijmn", n_s, n_s) / tau
        return softmax_kl(s_t, s_s, dim=-1).mean()


@register_term("cirkd-mem")
class CrossImageMemoryLoss(nn.Module):
    r"""CIRKD memory-based pixel-to-pixel and pixel-to-region distillation (``losses/cirkd_memory.py``).

    Teacher queues per class k: ``pixel_memory`` L2-normalised teacher pixel embeddings and
    ``region_memory`` normalised class means (one per image containing k). Each step the current
    batch is enqueued first (up to ``pixels_per_class`` random pixels per class and image, and one
    region per class and image), then for every labelled pixel p (anchor) the student embedding
    :math:`s_p = \mathrm{normalize}(g(F^S)_p)` (projection g = 1x1 conv - BN - ReLU - 1x1 conv to
    the teacher's width) and the teacher's :math:`t_p` are compared with a random sample X of the
    queues: the same ``pixel_contrast`` (4 096) random slots of every class's pixel queue and
    ``region_contrast`` (1 024) of every region queue, i.e. K x 4 096 and K x 1 024 entries, as
    CIRKD's ``_sample_negative`` (``contrast_sample=per-class``; ``total`` takes
    ``pixel_contrast // K + 1`` per class, about 4 096 in all: cheaper, a different loss value):

    .. math:: L = \frac{T^2}{|V|}\sum_{p\in V}\mathrm{KL}\big(\sigma(t_p X^\top/\tau T)\,\Vert\,
              \sigma(s_p X^\top/\tau T)\big)

    with tau = 0.1, T = 1; the term is :math:`L_{pixel} + \text{region\_weight}\cdot L_{region}`.
    CIRKD's weights are 0.1 each on Cityscapes (``--lambda-memory-pixel/region``) and 0.01 on VOC.

    Differences from CIRKD, each measured in ``tests/test_parity.py``: the pixel enqueue takes the
    class's own pixels, where CIRKD indexes ``this_feat[:, perm[:K]]`` - the image's first
    ``num_pixel`` positions, mostly other classes' pixels
    (``test_cirkd_pixel_enqueue_difference``); enqueueing is vectorised (one sort of the labels, no
    loop over images and classes) and the queues are plain ring buffers (CIRKD writes a batch that
    would wrap at the queue's end into its last slots instead). The boolean indexing of the enqueue is the only host synchronisation of
    any loss here. The queues are buffers, so checkpoint.pt carries them (K x 20 000 x C_t floats:
    0.8 GB for 19 classes and a 512-channel teacher) and a resumed run continues with them.
    """

    search_space = SearchSpace(option="loss.cirkd.temperature", values=(0.05, 0.1, 0.2))

    def __init__(self, num_classes: int, student_channels: int, teacher_channels: int, cfg: CIRKDConfig):
        super().__init__()
        for name in ("pixel_memory", "region_memory", "pixel_contrast", "region_contrast", "pixels_per_class"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"options: cirkd.{name} must be >= 1, got {getattr(cfg, name)}")
        check_choice(cfg.contrast_sample, ("per-class", "total"), "cirkd.contrast_sample")
        self.cfg, self.num_classes = cfg, num_classes
        self.project = nn.Sequential(nn.Conv2d(student_channels, teacher_channels, 1, bias=False),
                                     nn.BatchNorm2d(teacher_channels), nn.ReLU(inplace=True),
                                     nn.Conv2d(teacher_channels, teacher_channels, 1, bias=False))
        k, c = num_classes, teacher_channels
        self.register_buffer("pixel_queue", F.normalize(torch.randn(k, cfg.pixel_memory, c), dim=-1))
        self.register_buffer("pixel_ptr", torch.zeros(k, dtype=torch.long))
        self.register_buffer("region_queue", F.normalize(torch.randn(k, cfg.region_memory, c), dim=-1))
        self.register_buffer("region_ptr", torch.zeros(k, dtype=torch.long))

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: TermDims) -> CrossImageMemoryLoss:
        return cls(dims.num_classes, dims.student_channels, dims.teacher_channels, cfg.cirkd)

    @staticmethod
    def _write(queue, ptr, classes, order, values) -> None:
        """Ring-buffer write of ``values[e]`` at ``(ptr[classes[e]] + order[e]) % size``; when more
        entries than slots arrive for a class, only its newest ``size`` are kept."""
        size = queue.shape[1]
        count = torch.bincount(classes, minlength=queue.shape[0])
        keep = order >= (count[classes] - size)
        slots = (ptr[classes] + order) % size
        queue[classes[keep], slots[keep]] = values[keep].to(queue.dtype)
        ptr.copy_((ptr + count) % size)

    @torch.no_grad()
    def enqueue(self, f_t: torch.Tensor, labels: torch.Tensor) -> None:
        """Push normalised teacher pixels and class means of the batch (labels at feature size).
        Under DDP the whole global batch is pushed on every rank (CIRKD's concat_all_gather), so
        the queues stay identical across ranks."""
        f_t, labels = distributed.gather(f_t), distributed.gather(labels)
        b, c, h, w = f_t.shape
        k = self.num_classes
        weights = class_weights(labels, k, (h, w))
        centres, mass = class_centres(f_t, weights)
        # regions: one per (image, present class), ordered by image within each class
        present = mass > 0
        rank = present.long().cumsum(0) - 1
        classes = torch.arange(k, device=f_t.device).expand(b, k)
        self._write(self.region_queue, self.region_ptr, classes[present], rank[present],
                    F.normalize(centres[present], dim=-1))
        # pixels: sort each image's pixels by class + a random key, i.e. grouped by class in random order
        flat = labels.flatten(1)
        valid = flat != IGNORE_INDEX
        key = torch.where(valid, flat, k).to(f_t.dtype) + torch.rand(flat.shape, device=f_t.device)
        order = key.argsort(dim=1)
        sorted_labels = flat.gather(1, order).clamp(max=k)
        counts = torch.cat([mass.round().long(), (~valid).sum(1, keepdim=True)], 1)      # B x (K+1)
        start = counts.cumsum(1) - counts
        rank_in_class = torch.arange(h * w, device=f_t.device) - start.gather(1, sorted_labels)
        taken = counts[:, :k].clamp(max=self.cfg.pixels_per_class)
        offset = torch.cat([torch.zeros_like(taken[:1]), taken.cumsum(0)[:-1]])        # earlier images first
        offset = torch.cat([offset, torch.zeros_like(offset[:, :1])], 1).gather(1, sorted_labels)
        chosen = (sorted_labels < k) & (rank_in_class < self.cfg.pixels_per_class)
        pixels = F.normalize(f_t.flatten(2).transpose(1, 2), dim=-1).gather(1, order[..., None].expand(-1, -1, c))
        self._write(self.pixel_queue, self.pixel_ptr, sorted_labels[chosen], (offset + rank_in_class)[chosen],
                    pixels[chosen])

    def _sample(self, queue: torch.Tensor, size: int) -> torch.Tensor:
        """The same random ``size`` slots of every class's queue (CIRKD), or ``size // K + 1``
        slots each with ``contrast_sample=total``."""
        per_class = size if self.cfg.contrast_sample == "per-class" else size // self.num_classes + 1
        per_class = min(per_class, queue.shape[1])
        index = torch.randperm(queue.shape[1], device=queue.device)[:per_class]
        return queue[:, index].flatten(0, 1)                                            # (K * per_class) x C

    def _contrast_kd(self, s, t, bank, valid) -> torch.Tensor:
        temp, kd_t = self.cfg.temperature, self.cfg.kd_temperature
        kl = softmax_kl(t @ bank.T / (temp * kd_t), s @ bank.T / (temp * kd_t), dim=-1)
        return kd_t * kd_t * (kl * valid).sum() / valid.sum().clamp_min(1)

    def forward(self, student_out, teacher_out, labels):
        f_t = F.normalize(teacher_out["feat"].detach().float(), dim=1)
        f_s = F.normalize(to_size(self.project(student_out["feat"].float()), f_t.shape[-2:]), dim=1)
        labels = resize_labels(labels, f_t.shape[-2:])
        self.enqueue(f_t, labels)
        valid = (labels != IGNORE_INDEX).flatten().to(f_t.dtype)
        t = f_t.permute(0, 2, 3, 1).flatten(0, 2)
        s = f_s.permute(0, 2, 3, 1).flatten(0, 2)
        pixel = self._contrast_kd(s, t, self._sample(self.pixel_queue, self.cfg.pixel_contrast), valid)
        region = self._contrast_kd(s, t, self._sample(self.region_queue, self.cfg.region_contrast), valid)
        return pixel + self.cfg.region_weight * region
