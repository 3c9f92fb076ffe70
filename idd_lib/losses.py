"""Losses of the study, each a small module with its formula, and the method registry.

Every term has the signature ``term(student_out, teacher_out, labels) -> scalar`` where the
``*_out`` dicts come from :class:`~idd_lib.models.Segmentor` (``out``, ``aux``, ``feat``) and
``labels`` is ``B x H x W`` with ignore index 255. Teacher outputs are always treated as
constants. Nothing here loops over pixels, classes or images, and nothing synchronises with the
host, so the terms are cheap inside a GPU step.

Normalisation convention (BASELINES.md 2.1): pixel terms are means over valid (non-ignored)
pixels. So our ``kd`` weight 1 equals CIRKD's ``lambda_kd=1``; IFVD's/SKD's ``lambda=10`` with
``nn.KLDivLoss()`` means 10/C per pixel (0.53 on Cityscapes), SKD's pixel-wise term 10N.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import IDDConfig, KDConfig, LossConfig, PIDConfig

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


def interclass_distance_matrix(features, labels, num_classes: int, cfg: IDDConfig, size=None):
    """Distance matrices and the mask of present class pairs (i < j), steps 1-5 of METHOD.md.

    Returns ``D`` (B' x K x K; B' = 1 for per-batch centres) and ``pair_mask`` (bool, same shape).
    """
    size = tuple(size or features.shape[-2:])
    if features.shape[-2:] != size:
        features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
    weights = class_weights(labels, num_classes, size, cfg.label_sampling)
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
        d_t, mask = interclass_distance_matrix(f_t, labels, self.num_classes, self.cfg)
        d_s, _ = interclass_distance_matrix(student_out["feat"], labels, self.num_classes, self.cfg, f_t.shape[-2:])
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
    """A small read-out (PosENet-like): 3x3 conv - ReLU - 1x1 conv."""
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, outputs, 1))


class PositionDistillation(nn.Module):
    r"""PID (our reconstruction of the paper's position module, METHOD.md H1).

    A teacher read-out :math:`\phi_T` is fitted alongside, on detached teacher features, to the
    position maps G: :math:`L_{fit} = \lVert \phi_T(F_T) - G \rVert^2` (touches only
    :math:`\phi_T`). The student term is

    * ``readout``: :math:`\lVert \phi_S(F_S) - \phi_T(F_T) \rVert^2` with a student read-out
      :math:`\phi_S`;
    * ``probe``:   :math:`\lVert \phi_T(A F_S) - \phi_T(F_T) \rVert^2` with a 1x1 adapter A and
      :math:`\phi_T` frozen for this term;

    pixel means. Student features are resized to the teacher's size. Returns student term +
    fit term; ``last_terms`` keeps both for logging.
    """

    def __init__(self, student_channels: int, teacher_channels: int, cfg: PIDConfig):
        super().__init__()
        _check_choice(cfg.mode, ("readout", "probe"), "pid.mode")
        self.cfg = cfg
        outputs = len(cfg.targets)
        position_targets(cfg.targets, (2, 2))  # validates names early
        self.teacher_readout = position_readout(teacher_channels, cfg.hidden, outputs)
        if cfg.mode == "readout":
            self.student_readout = position_readout(student_channels, cfg.hidden, outputs)
        else:
            self.adapter = nn.Conv2d(student_channels, teacher_channels, 1)

    def forward(self, student_out, teacher_out, labels):
        f_t = teacher_out["feat"].detach().float()
        f_s = student_out["feat"].float()
        if f_s.shape[-2:] != f_t.shape[-2:]:
            f_s = F.interpolate(f_s, size=f_t.shape[-2:], mode="bilinear", align_corners=False)
        target = position_targets(self.cfg.targets, f_t.shape[-2:], f_t.device).expand(f_t.shape[0], -1, -1, -1)
        pos_t = self.teacher_readout(f_t)
        fit = F.mse_loss(pos_t, target)
        if self.cfg.mode == "readout":
            pos_s = self.student_readout(f_s)
        else:
            frozen = {k: v.detach() for k, v in self.teacher_readout.named_parameters()}
            pos_s = torch.func.functional_call(self.teacher_readout, frozen, (self.adapter(f_s),))
        return F.mse_loss(pos_s, pos_t.detach()) + fit


@dataclass(frozen=True)
class Method:
    """A registered method: its loss terms with default weights and a one-line description."""
    name: str
    weights: dict[str, float]
    description: str


# Default weights: kd 1 is CIRKD's per-pixel weight; idd and pid weights are not given by the
# paper's abstract - calibrated on the default benchmark and swept in 03_ablation.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("baseline", {"ce": 1.0}, "student trained on labels only"),
    Method("kd", {"ce": 1.0, "kd": 1.0}, "pixel-wise KD on logits (Hinton, per pixel)"),
    Method("idd-only", {"ce": 1.0, "idd": 5.0}, "IDD term alone on head features"),
    Method("idd", {"ce": 1.0, "kd": 1.0, "idd": 5.0}, "IDD + pixel-wise KD (the paper's framework without the adversarial term)"),
    Method("pid", {"ce": 1.0, "kd": 1.0, "pid": 1.0}, "position information distillation + pixel-wise KD"),
    Method("idd+pid", {"ce": 1.0, "kd": 1.0, "idd": 5.0, "pid": 1.0}, "full IDD objective without the adversarial term"),
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
}
TEACHER_FREE_TERMS = {"ce"}


class DistillationCriterion(nn.Module):
    """Weighted sum of the method's terms; holds the terms' own parameters (read-outs, adapters)."""

    def __init__(self, cfg: LossConfig, num_classes: int, student_channels: int, teacher_channels: int | None):
        super().__init__()
        self.weights = method_weights(cfg)
        self.needs_teacher = any(t not in TEACHER_FREE_TERMS for t in self.weights)
        if self.needs_teacher and teacher_channels is None:
            raise ValueError(f"method: {cfg.method!r} needs a teacher, but none was given")
        self.terms = nn.ModuleDict({t: TERM_BUILDERS[t](cfg, num_classes, student_channels, teacher_channels)
                                    for t in self.weights})

    def forward(self, student_out, teacher_out, labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = {name: term(student_out, teacher_out, labels) for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, values
