"""Losses of the study, each a small module with its formula, and the method registry.

Every term has the signature ``term(student_out, teacher_out, labels) -> scalar`` where the
``*_out`` dicts come from :class:`~idd_lib.models.Segmentor` (``out``, ``aux``, ``feat``) and
``labels`` is ``B x H x W`` with ignore index 255 (terms with ``uses_images`` also get
``images=``). Teacher outputs are always treated as constants. Nothing here loops over pixels,
classes or images, and nothing synchronises with the host (except the CIRKD memory's enqueue),
so the terms are cheap inside a GPU step. :class:`DistillationCriterion` computes every term in fp32,
outside the networks' bf16 autocast.

Baselines (BASELINES.md 2.2): SKD pair-wise ``pa`` and holistic adversarial ``ho``
(:mod:`idd_lib.adversarial`), IFVD ``ifv``, CWD ``cwd``/``cwd-feat``, CIRKD ``cirkd-mb`` and
``cirkd-mem``; each alone and in its published composite in :data:`METHODS`.

Normalisation convention (BASELINES.md 2.1): pixel terms are means over valid (non-ignored)
pixels. So our ``kd`` weight 1 equals CIRKD's ``lambda_kd=1``; IFVD's/SKD's ``lambda=10`` with
``nn.KLDivLoss()`` means 10/C per pixel (0.53 on Cityscapes), SKD's pixel-wise term 10N.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .adversarial import HolisticAdversarialLoss
from .config import CIRKDConfig, CWDConfig, IDDConfig, KDConfig, LossConfig, PairwiseConfig, PIDConfig

IGNORE_INDEX = 255


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ValueError(f"options: {name} must be one of {list(choices)}, got {value!r}")


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour label sampling ``B x H x W -> B x h x w`` (keeps the ignore index)."""
    if labels.shape[-2:] == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


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


def interclass_distance_matrix(features, weights, cfg: IDDConfig):
    """Distance matrices and the mask of present class pairs (i < j), steps 1-5 of METHOD.md.

    ``weights`` are the class weights (:func:`class_weights`) at the size the matrices are computed
    at, so one labelling serves both networks; features are resized to it bilinearly. Returns ``D``
    (B' x K x K; B' = 1 for per-batch centres) and ``pair_mask`` (bool, same shape).
    """
    num_classes, size = weights.shape[1], weights.shape[-2:]
    if features.shape[-2:] != size:
        features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
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


class InterClassDistanceLoss(nn.Module):
    r"""IDD: match the student's inter-class distance matrix to the teacher's (METHOD.md).

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

    def __init__(self, num_classes: int, cfg: IDDConfig):
        super().__init__()
        _check_choice(cfg.label_sampling, ("nearest", "soft"), "idd.label_sampling")
        _check_choice(cfg.centres, ("per-image", "per-batch"), "idd.centres")
        _check_choice(cfg.metric, ("euclidean", "cosine", "sqeuclidean"), "idd.metric")
        _check_choice(cfg.normalize, ("mean", "none"), "idd.normalize")
        _check_choice(cfg.penalty, ("squared", "smooth-l1"), "idd.penalty")
        self.num_classes, self.cfg = num_classes, cfg

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


class SegmentationCE(nn.Module):
    r""":math:`L = CE(\uparrow z^S, y) + \lambda_{aux} CE(\uparrow z^S_{aux}, y)`, logits upsampled
    bilinearly to the label size, ignore index 255, mean over valid pixels (torchvision reference)."""

    def __init__(self, aux_weight: float = 0.4):
        super().__init__()
        self.aux_weight = aux_weight

    def forward(self, student_out, teacher_out, labels):
        loss = self._ce(student_out["out"], labels)
        if "aux" in student_out and self.aux_weight > 0:
            loss = loss + self.aux_weight * self._ce(student_out["aux"], labels)
        return loss

    @staticmethod
    def _ce(logits, labels):
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


class PixelwiseKD(nn.Module):
    r"""Pixel-wise KD on logits at feature resolution:

    .. math:: L = \frac{T^2}{|V|} \sum_{p \in V} \mathrm{KL}\big(\sigma(z^T_p/T)\,\Vert\,\sigma(z^S_p/T)\big)

    with V the non-ignored pixels (labels sampled nearest to the logit size). Student logits are
    resized to the teacher's if they differ.
    """

    def __init__(self, cfg: KDConfig):
        super().__init__()
        if not cfg.temperature > 0:
            raise ValueError(f"options: kd.temperature must be > 0, got {cfg.temperature}")
        self.temperature = cfg.temperature

    def forward(self, student_out, teacher_out, labels):
        z_t = teacher_out["out"].detach().float()
        z_s = student_out["out"].float()
        if z_s.shape[-2:] != z_t.shape[-2:]:
            z_s = F.interpolate(z_s, size=z_t.shape[-2:], mode="bilinear", align_corners=False)
        t = self.temperature
        log_p_t = F.log_softmax(z_t / t, dim=1)
        kl = (log_p_t.exp() * (log_p_t - F.log_softmax(z_s / t, dim=1))).sum(1)
        valid = (resize_labels(labels, z_t.shape[-2:]) != IGNORE_INDEX).to(kl.dtype)
        return t * t * (kl * valid).sum() / valid.sum().clamp_min(1)


def position_targets(names: tuple[str, ...], size: tuple[int, int], device=None) -> torch.Tensor:
    """Position maps ``P x h x w``: normalised x and y ramps in [-1, 1] and a centred Gaussian."""
    ys = torch.linspace(-1.0, 1.0, size[0], device=device)[:, None].expand(size)
    xs = torch.linspace(-1.0, 1.0, size[1], device=device)[None, :].expand(size)
    maps = {"x": xs, "y": ys, "gaussian": torch.exp(-(xs.square() + ys.square()) / (2 * 0.4 ** 2))}
    unknown = set(names) - set(maps)
    if unknown:
        raise ValueError(f"options: pid.targets has unknown maps {sorted(unknown)}; expected among {sorted(maps)}")
    return torch.stack([maps[n] for n in names])


def position_readout(in_channels: int, hidden: int, outputs: int) -> nn.Sequential:
    """A small read-out: 3x3 conv - ReLU - 1x1 conv with ``hidden`` channels, or with ``hidden=0``
    one linear 3x3 conv, the base read-out of PosENet (Islam et al. 2020)."""
    if hidden == 0:
        return nn.Sequential(nn.Conv2d(in_channels, outputs, 3, padding=1))
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, outputs, 1))


class PositionDistillation(nn.Module):
    r"""PID (our reconstruction of the paper's position module, METHOD.md H1).

    A teacher read-out :math:`\phi_T` regresses the position maps G from detached teacher features,
    :math:`L_{fit} = \lVert \phi_T(F_T) - G \rVert^2`. With ``pid.teacher_fit``

    * ``joint``: :math:`L_{fit}` is added to the loss and fits :math:`\phi_T` alongside distillation
      (it touches only :math:`\phi_T`);
    * ``prefit``: :meth:`prefit` fits :math:`\phi_T` on its own before distillation (Adam,
      ``pid.prefit_steps`` batches), then :math:`\phi_T` stays frozen and the loss has no fit term.

    The student term is

    * ``readout``: :math:`\lVert \phi_S(F_S) - \phi_T(F_T) \rVert^2` with a student read-out
      :math:`\phi_S`;
    * ``probe``:   :math:`\lVert \phi_T(A F_S) - \phi_T(F_T) \rVert^2` with a 1x1 adapter A and
      :math:`\phi_T` frozen for this term;

    pixel means. Student features are resized to the teacher's size. Each read-out is
    :func:`position_readout` with ``pid.hidden`` channels (0: one linear 3x3 conv).
    """

    def __init__(self, student_channels: int, teacher_channels: int, cfg: PIDConfig):
        super().__init__()
        _check_choice(cfg.mode, ("readout", "probe"), "pid.mode")
        _check_choice(cfg.teacher_fit, ("joint", "prefit"), "pid.teacher_fit")
        if cfg.hidden < 0:
            raise ValueError(f"options: pid.hidden must be >= 0 (0: one linear 3x3 conv), got {cfg.hidden}")
        if cfg.teacher_fit == "prefit" and (cfg.prefit_steps < 1 or not cfg.prefit_lr > 0):
            raise ValueError(f"options: pid.teacher_fit=prefit needs pid.prefit_steps >= 1 and pid.prefit_lr > 0, "
                             f"got {cfg.prefit_steps} and {cfg.prefit_lr}")
        self.cfg = cfg
        self.prefit_steps = cfg.prefit_steps
        outputs = len(cfg.targets)
        position_targets(cfg.targets, (2, 2))  # validates names early
        self.teacher_readout = position_readout(teacher_channels, cfg.hidden, outputs)
        if cfg.mode == "readout":
            self.student_readout = position_readout(student_channels, cfg.hidden, outputs)
        else:
            self.adapter = nn.Conv2d(student_channels, teacher_channels, 1)
        if cfg.teacher_fit == "prefit":
            self.teacher_readout.requires_grad_(False)
            # the final fit loss of prefit(), NaN until it ran; saved with the checkpoint, so a
            # resumed run neither fits again nor forgets the value
            self.register_buffer("prefit_loss", torch.tensor(float("nan")))
            self._prefit_checked = False

    @property
    def needs_prefit(self) -> bool:
        return self.cfg.teacher_fit == "prefit" and bool(self.prefit_loss.isnan())

    def separate_parameters(self) -> list[nn.Parameter]:
        r"""With ``prefit``, :math:`\phi_T` is trained by :meth:`prefit`'s optimiser, not the student's."""
        return list(self.teacher_readout.parameters()) if self.cfg.teacher_fit == "prefit" else []

    def _fit_loss(self, pos_t: torch.Tensor) -> torch.Tensor:
        target = position_targets(self.cfg.targets, pos_t.shape[-2:], pos_t.device)
        return F.mse_loss(pos_t, target.expand(pos_t.shape[0], -1, -1, -1))

    def prefit(self, teacher_outputs: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
        r"""Fit :math:`\phi_T` alone, one Adam step per teacher output, then freeze it; returns the
        last fit loss (also kept in ``prefit_loss``)."""
        readout = self.teacher_readout
        optimizer = torch.optim.Adam(readout.parameters(), lr=self.cfg.prefit_lr)
        readout.requires_grad_(True)
        fit = torch.tensor(float("nan"))
        try:
            for teacher_out in teacher_outputs:
                with torch.enable_grad():  # per step: the caller's iterator may switch grad mode between items
                    fit = self._fit_loss(readout(teacher_out["feat"].detach().float()))
                optimizer.zero_grad(set_to_none=True)
                fit.backward()
                optimizer.step()
        finally:
            readout.requires_grad_(False).zero_grad(set_to_none=True)
        self.prefit_loss.copy_(fit.detach())
        return self.prefit_loss.clone()

    def forward(self, student_out, teacher_out, labels):
        f_t = teacher_out["feat"].detach().float()
        f_s = student_out["feat"].float()
        if f_s.shape[-2:] != f_t.shape[-2:]:
            f_s = F.interpolate(f_s, size=f_t.shape[-2:], mode="bilinear", align_corners=False)
        if self.cfg.teacher_fit == "prefit":
            if self.training and not self._prefit_checked:  # once: reading the buffer syncs with the GPU
                if self.needs_prefit:
                    raise RuntimeError("pid.teacher_fit=prefit: the teacher read-out has not been pre-fitted "
                                       "(PositionDistillation.prefit runs before training)")
                self._prefit_checked = True
            with torch.no_grad():  # frozen: its backward would be wasted work
                pos_t = self.teacher_readout(f_t)
            fit = 0.0
        else:
            pos_t = self.teacher_readout(f_t)
            fit = self._fit_loss(pos_t)
        if self.cfg.mode == "readout":
            pos_s = self.student_readout(f_s)
        else:
            frozen = {k: v.detach() for k, v in self.teacher_readout.named_parameters()}
            pos_s = torch.func.functional_call(self.teacher_readout, frozen, (self.adapter(f_s),))
        return F.mse_loss(pos_s, pos_t.detach()) + fit


def _to_size(x: torch.Tensor, size) -> torch.Tensor:
    """Student maps are brought to the teacher's spatial size (bilinear) before comparing."""
    return x if x.shape[-2:] == tuple(size) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _valid_mean(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of a ``B x h x w`` map over the pixels whose (nearest-sampled) label is not ignored."""
    valid = (resize_labels(labels, values.shape[-2:]) != IGNORE_INDEX).to(values.dtype)
    return (values * valid).sum() / valid.sum().clamp_min(1)


class PairwiseAffinityLoss(nn.Module):
    r"""SKD pair-wise distillation: match the cosine-affinity graph of head-feature nodes.

    .. math:: a_{ij} = \frac{f_i^\top f_j}{\lVert f_i\rVert\lVert f_j\rVert},\qquad
              L = \operatorname{mean}_{b,i,j}\big(a^T_{bij} - a^S_{bij}\big)^2

    over the nodes of max-pooled head features, one graph per image (a batched matmul). The graph
    has ``n x n`` entries whatever the channel counts, so no adapter is needed. Variants
    (``loss.pa.variant``, BASELINES.md 2.2):

    * ``cirkd`` (default; CIRKD ``losses/skd.py``): 2x2 max-pool (``ceil_mode``), ``F.normalize``;
      weight 10 in CIRKD's SKD runs (``train_skd.sh``).
    * ``skd`` (official SKD ``sim_dis_compute`` with ``CriterionPairWiseforWholeFeatAfterPool``):
      kernel = ``int(pool_scale x size)`` (a 2x2-3x3 graph at scale 0.5), the norm detached;
      weight 0.5 in SKD's ``run_train_val.sh``.

    Both papers' losses are already means over (b, i, j), so their weights need no conversion.
    """

    def __init__(self, cfg: PairwiseConfig):
        super().__init__()
        _check_choice(cfg.variant, ("cirkd", "skd"), "pa.variant")
        if not 0 < cfg.pool_scale <= 1:
            raise ValueError(f"options: pa.pool_scale must be in (0, 1], got {cfg.pool_scale}")
        self.cfg = cfg

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
        f_s = _to_size(student_out["feat"].float(), f_t.shape[-2:])
        return (self.affinity(f_t) - self.affinity(f_s)).square().mean()


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
    divided by all pixels instead of the labelled ones - our value is theirs / (labelled fraction).
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def similarity_map(self, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        centres, _ = class_centres(features, weights)
        painted = torch.einsum("bkc,bkhw->bchw", centres, weights)
        return F.cosine_similarity(features, painted, dim=1)

    def forward(self, student_out, teacher_out, labels):
        f_t = teacher_out["feat"].detach().float()
        f_s = _to_size(student_out["feat"].float(), f_t.shape[-2:])
        weights = class_weights(labels, self.num_classes, f_t.shape[-2:])
        diff = (self.similarity_map(f_s, weights) - self.similarity_map(f_t, weights)).square()
        valid = weights.sum(1)
        return (diff * valid).sum() / valid.sum().clamp_min(1)


class ChannelWiseDistillation(nn.Module):
    r"""CWD: each channel becomes a distribution over the positions, matched with KL.

    .. math:: \phi(y)_{c,i} = \frac{\exp(y_{c,i}/T)}{\sum_j \exp(y_{c,j}/T)},\qquad
              L = \frac{T^2}{N C}\sum_{n,c}\sum_i \phi(y^T)_{nc,i}\log\frac{\phi(y^T)_{nc,i}}{\phi(y^S)_{nc,i}}

    over every image of the batch (the official ``CriterionCWD`` with ``norm_type='none'`` used
    the first image only; the channel-normalised path used here never had that bug). Positions
    include unlabelled pixels: CWD uses no labels.

    * ``cwd`` (logits): T = 4, weight 3 - the official README (``exp_cwd.sh channel kl 3 4``),
      alone, no KD, no adversarial term. mmrazor uses T = 1, weight 5.
    * ``cwd-feat`` (head features): a 1x1 conv adapter (no bias) maps the student's channels to
      the teacher's when they differ (CIRKD ``losses/cwd.py``); T = 4, weight 50 (CIRKD).

    The official loss is already a mean over (n, c), so the weights need no conversion.
    """

    def __init__(self, cfg: CWDConfig, key: str = "out", student_channels: int | None = None,
                 teacher_channels: int | None = None):
        super().__init__()
        if not cfg.temperature > 0:
            raise ValueError(f"options: cwd.temperature must be > 0, got {cfg.temperature}")
        self.temperature, self.key = cfg.temperature, key
        self.adapter = None
        if key == "feat" and student_channels != teacher_channels:
            self.adapter = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)

    def forward(self, student_out, teacher_out, labels):
        y_t = teacher_out[self.key].detach().float()
        y_s = student_out[self.key].float()
        if self.adapter is not None:
            y_s = self.adapter(y_s)
        y_s = _to_size(y_s, y_t.shape[-2:])
        t = self.temperature
        log_p_t = F.log_softmax(y_t.flatten(2) / t, dim=-1)
        log_p_s = F.log_softmax(y_s.flatten(2) / t, dim=-1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)          # N x C
        return t * t * kl.mean()


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

    def __init__(self, cfg: CIRKDConfig):
        super().__init__()
        if not cfg.temperature > 0 or cfg.minibatch_pool < 1:
            raise ValueError("options: cirkd.temperature must be > 0 and cirkd.minibatch_pool >= 1")
        self.cfg = cfg

    def _nodes(self, features: torch.Tensor) -> torch.Tensor:
        k = self.cfg.minibatch_pool
        if k > 1:
            features = F.avg_pool2d(features, k, k, ceil_mode=True)
        return F.normalize(features.flatten(2), dim=1)                 # B x C x n

    def forward(self, student_out, teacher_out, labels):
        f_t = teacher_out["feat"].detach().float()
        f_s = _to_size(student_out["feat"].float(), f_t.shape[-2:])
        n_t, n_s = self._nodes(f_t), self._nodes(f_s)
        tau = self.cfg.temperature
        s_t = torch.einsum("icm,jcn->ijmn", n_t, n_t) / tau
        s_s = torch.einsum("icm,jcn->ijmn", n_s, n_s) / tau
        log_p_t = F.log_softmax(s_t, dim=-1)
        return (log_p_t.exp() * (log_p_t - F.log_softmax(s_s, dim=-1))).sum(-1).mean()


class CrossImageMemoryLoss(nn.Module):
    r"""CIRKD memory-based pixel-to-pixel and pixel-to-region distillation (``losses/cirkd_memory.py``).

    Teacher queues per class k: ``pixel_memory`` L2-normalised teacher pixel embeddings and
    ``region_memory`` normalised class means (one per image containing k). Each step the current
    batch is enqueued first (up to ``pixels_per_class`` random pixels per class and image, and one
    region per class and image), then for every labelled pixel p (anchor) the student embedding
    :math:`s_p = \mathrm{normalize}(g(F^S)_p)` (projection g = 1x1 conv - BN - ReLU - 1x1 conv to
    the teacher's width) and the teacher's :math:`t_p` are compared with a random sample X of the
    queue (``pixel_contrast // K + 1`` entries per class):

    .. math:: L = \frac{T^2}{|V|}\sum_{p\in V}\mathrm{KL}\big(\sigma(t_p X^\top/\tau T)\,\Vert\,
              \sigma(s_p X^\top/\tau T)\big)

    with tau = 0.1, T = 1; the term is :math:`L_{pixel} + \text{region\_weight}\cdot L_{region}`.
    CIRKD's weights are 0.1 each on Cityscapes (``--lambda-memory-pixel/region``) and 0.01 on VOC.

    Differences from CIRKD: enqueueing is vectorised (one sort of the labels, no loop over images
    and classes) and the queues are plain ring buffers (CIRKD writes a batch that would wrap at the
    queue's end instead). The boolean indexing of the enqueue is the only host synchronisation of
    any loss here. The queues are buffers, so checkpoint.pt carries them (K x 20 000 x C_t floats:
    0.8 GB for 19 classes and a 512-channel teacher) and a resumed run continues with them.
    """

    def __init__(self, num_classes: int, student_channels: int, teacher_channels: int, cfg: CIRKDConfig):
        super().__init__()
        for name in ("pixel_memory", "region_memory", "pixel_contrast", "region_contrast", "pixels_per_class"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"options: cirkd.{name} must be >= 1, got {getattr(cfg, name)}")
        self.cfg, self.num_classes = cfg, num_classes
        self.project = nn.Sequential(nn.Conv2d(student_channels, teacher_channels, 1, bias=False),
                                     nn.BatchNorm2d(teacher_channels), nn.ReLU(inplace=True),
                                     nn.Conv2d(teacher_channels, teacher_channels, 1, bias=False))
        k, c = num_classes, teacher_channels
        self.register_buffer("pixel_queue", F.normalize(torch.randn(k, cfg.pixel_memory, c), dim=-1))
        self.register_buffer("pixel_ptr", torch.zeros(k, dtype=torch.long))
        self.register_buffer("region_queue", F.normalize(torch.randn(k, cfg.region_memory, c), dim=-1))
        self.register_buffer("region_ptr", torch.zeros(k, dtype=torch.long))

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

    def _sample(self, queue: torch.Tensor, total: int) -> torch.Tensor:
        per_class = min(total // self.num_classes + 1, queue.shape[1])
        index = torch.randperm(queue.shape[1], device=queue.device)[:per_class]
        return queue[:, index].flatten(0, 1)                                            # (K * per_class) x C

    def _contrast_kd(self, s, t, bank, valid) -> torch.Tensor:
        temp, kd_t = self.cfg.temperature, self.cfg.kd_temperature
        log_p_t = F.log_softmax(t @ bank.T / (temp * kd_t), dim=-1)
        log_p_s = F.log_softmax(s @ bank.T / (temp * kd_t), dim=-1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
        return kd_t * kd_t * (kl * valid).sum() / valid.sum().clamp_min(1)

    def forward(self, student_out, teacher_out, labels):
        f_t = F.normalize(teacher_out["feat"].detach().float(), dim=1)
        f_s = F.normalize(_to_size(self.project(student_out["feat"].float()), f_t.shape[-2:]), dim=1)
        labels = resize_labels(labels, f_t.shape[-2:])
        self.enqueue(f_t, labels)
        valid = (labels != IGNORE_INDEX).flatten().to(f_t.dtype)
        t = f_t.permute(0, 2, 3, 1).flatten(0, 2)
        s = f_s.permute(0, 2, 3, 1).flatten(0, 2)
        pixel = self._contrast_kd(s, t, self._sample(self.pixel_queue, self.cfg.pixel_contrast), valid)
        region = self._contrast_kd(s, t, self._sample(self.region_queue, self.cfg.region_contrast), valid)
        return pixel + self.cfg.region_weight * region


@dataclass(frozen=True)
class Method:
    """A registered method: its loss terms with default weights and a one-line description."""
    name: str
    weights: dict[str, float]
    description: str


# Default weights and their sources (BASELINES.md 2.1-2.2), in our normalisation (pixel terms
# are means over valid pixels, x T^2): kd 1 is CIRKD's per-pixel weight; IFVD's "lambda_kd 10"
# with nn.KLDivLoss() (mean over classes too) is 10/C = 0.53 for C = 19. Composite recipes are
# entries of their own. idd and pid weights are not given by the paper's abstract - calibrated on
# the default benchmark and swept in 03_ablation.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("baseline", {"ce": 1.0}, "student trained on labels only"),
    Method("kd", {"ce": 1.0, "kd": 1.0}, "pixel-wise KD on logits (Hinton, per pixel; CIRKD's weight)"),
    Method("idd-only", {"ce": 1.0, "idd": 5.0}, "IDD term alone on head features"),
    Method("idd", {"ce": 1.0, "kd": 1.0, "idd": 5.0}, "IDD + pixel-wise KD (the paper's framework without the adversarial term)"),
    Method("pid", {"ce": 1.0, "kd": 1.0, "pid": 1.0}, "position information distillation + pixel-wise KD"),
    Method("idd+pid", {"ce": 1.0, "kd": 1.0, "idd": 5.0, "pid": 1.0}, "full IDD objective without the adversarial term"),
    # each baseline term alone, at the weight of its published recipe
    Method("pa", {"ce": 1.0, "pa": 10.0}, "SKD pair-wise affinity alone (CIRKD's weight and 2x2 graph)"),
    Method("ho", {"ce": 1.0, "ho": 0.001}, "SKD holistic adversarial term alone (WGAN-GP, own Adam)"),
    Method("ifv", {"ce": 1.0, "ifv": 200.0}, "IFVD intra-class feature variation alone (IFVD's weight)"),
    Method("cwd", {"ce": 1.0, "cwd": 3.0}, "CWD on logits, T = 4, alone: the official CWD README recipe"),
    Method("cwd-feat", {"ce": 1.0, "cwd-feat": 50.0}, "CWD on head features with a 1x1 adapter alone (CIRKD's weight)"),
    Method("cirkd-mb", {"ce": 1.0, "cirkd-mb": 1.0}, "CIRKD mini-batch pixel-to-pixel term alone"),
    Method("cirkd-mem", {"ce": 1.0, "cirkd-mem": 0.1}, "CIRKD memory pixel-to-pixel + pixel-to-region terms alone"),
    # published composites
    Method("skd", {"ce": 1.0, "kd": 1.0, "pa": 10.0, "ho": 0.001}, "SKD as in CIRKD's runs: KD + pair-wise + adversarial"),
    Method("ifvd", {"ce": 1.0, "kd": 0.53, "ifv": 200.0, "ho": 0.001}, "IFVD's own recipe: KD (10/C) + IFV + adversarial"),
    Method("cwd-cirkd", {"ce": 1.0, "kd": 1.0, "cwd": 3.0, "cwd-feat": 50.0, "ho": 0.001},
           "CWD as in CIRKD's runs: KD + CWD on logits and features + adversarial"),
    Method("cirkd", {"ce": 1.0, "kd": 1.0, "cirkd-mb": 1.0, "cirkd-mem": 0.1}, "CIRKD (Cityscapes weights): KD + mini-batch + memory"),
)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method: unknown method {name!r}; expected one of {sorted(METHODS)}") from None


def method_weights(cfg: LossConfig) -> dict[str, float]:
    """The method's default weights with ``cfg.weights`` overrides; unknown terms are an error."""
    weights = dict(get_method(cfg.method).weights)
    for term, weight in cfg.weights:
        if term not in TERM_BUILDERS:
            raise ValueError(f"weights: unknown loss term {term!r}; expected among {sorted(TERM_BUILDERS)}")
        if not (weight >= 0 and weight != float("inf")):
            raise ValueError(f"weights: {term} must be a finite number >= 0, got {weight}")
        weights[term] = weight
    return {term: w for term, w in weights.items() if w > 0}


TERM_BUILDERS = {
    "ce": lambda cfg, k, cs, ct: SegmentationCE(cfg.aux_weight),
    "kd": lambda cfg, k, cs, ct: PixelwiseKD(cfg.kd),
    "idd": lambda cfg, k, cs, ct: InterClassDistanceLoss(k, cfg.idd),
    "pid": lambda cfg, k, cs, ct: PositionDistillation(cs, ct, cfg.pid),
    "pa": lambda cfg, k, cs, ct: PairwiseAffinityLoss(cfg.pa),
    "ho": lambda cfg, k, cs, ct: HolisticAdversarialLoss(k, cfg.ho),
    "ifv": lambda cfg, k, cs, ct: IntraClassFeatureVariationLoss(k),
    "cwd": lambda cfg, k, cs, ct: ChannelWiseDistillation(cfg.cwd, "out"),
    "cwd-feat": lambda cfg, k, cs, ct: ChannelWiseDistillation(cfg.cwd, "feat", cs, ct),
    "cirkd-mb": lambda cfg, k, cs, ct: CrossImagePixelLoss(cfg.cirkd),
    "cirkd-mem": lambda cfg, k, cs, ct: CrossImageMemoryLoss(k, cs, ct, cfg.cirkd),
}
TEACHER_FREE_TERMS = {"ce"}


def _as_float(outputs: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """fp32 views of a network's outputs (no copy when they are fp32 already; differentiable)."""
    return None if outputs is None else {name: v.float() if v.is_floating_point() else v for name, v in outputs.items()}


class DistillationCriterion(nn.Module):
    """Weighted sum of the method's terms; holds the terms' own parameters (read-outs, adapters,
    projections) and modules trained by a term's own optimiser (the adversarial discriminator).

    Terms with ``uses_images`` also receive the input images. Terms with an ``update`` method run
    a second optimisation step of their own after the student's (:meth:`update`), and list what
    they train in ``separate_parameters()``: :meth:`student_parameters` leaves those out. Terms
    with ``needs_prefit`` fit modules of theirs once before training (:meth:`pending_prefits`;
    the engine runs them) and list those modules' parameters there too.
    """

    def __init__(self, cfg: LossConfig, num_classes: int, student_channels: int, teacher_channels: int | None):
        super().__init__()
        self.weights = method_weights(cfg)
        self.needs_teacher = any(t not in TEACHER_FREE_TERMS for t in self.weights)
        if self.needs_teacher and teacher_channels is None:
            raise ValueError(f"method: {cfg.method!r} needs a teacher, but none was given")
        self.terms = nn.ModuleDict({t: TERM_BUILDERS[t](cfg, num_classes, student_channels, teacher_channels)
                                    for t in self.weights})

    def forward(self, student_out, teacher_out, labels, images=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # The networks may run under bf16 autocast, but the terms run in fp32: they compare small
        # differences of large quantities (centre distances, affinities, cosine maps), and autocast
        # would round their matmuls and convolutions to bf16 (``benchmarks/loss_precision.py``).
        with torch.autocast(labels.device.type, enabled=False):
            values = self.term_values(_as_float(student_out), _as_float(teacher_out), labels, images)
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, values

    def term_values(self, student_out, teacher_out, labels, images=None) -> dict[str, torch.Tensor]:
        """Each term's unweighted value, computed in whatever precision the caller's context sets."""
        return {name: term(student_out, teacher_out, labels, images=images) if getattr(term, "uses_images", False)
                else term(student_out, teacher_out, labels) for name, term in self.terms.items()}

    def student_parameters(self) -> list[nn.Parameter]:
        """What the student's optimiser trains: every parameter except those a term trains itself."""
        separate = {id(p) for term in self.terms.values() if hasattr(term, "separate_parameters")
                    for p in term.separate_parameters()}
        return [p for p in self.parameters() if id(p) not in separate]

    def pending_prefits(self) -> dict[str, nn.Module]:
        """Terms with modules fitted before training (``needs_prefit``; see e.g.
        :meth:`PositionDistillation.prefit`) that have not been fitted yet."""
        return {name: term for name, term in self.terms.items() if getattr(term, "needs_prefit", False)}

    def prefit_losses(self) -> dict[str, float]:
        """The final fit loss of each pre-fitted term, named ``<term>_prefit``."""
        return {f"{name}_prefit": float(term.prefit_loss) for name, term in self.terms.items()
                if hasattr(term, "prefit_loss")}

    def update(self, student_out, teacher_out, labels, images=None) -> dict[str, torch.Tensor]:
        """Run the terms' own optimisation steps (after the student's); returns their losses to log,
        named ``<term>_<name>`` (e.g. ``ho_d``, the discriminator loss)."""
        logs = {}
        for name, term in self.terms.items():
            if hasattr(term, "update"):
                logs.update({f"{name}_{k}": v for k, v in term.update(student_out, teacher_out, labels, images).items()})
        return logs
