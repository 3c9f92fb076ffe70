"""Analysis of trained networks: dataset-level inter-class distances, pixel samples for t-SNE.

Distance matrices are accumulated over a whole split (class feature sums and pixel counts,
then centres), not taken from one batch, so they describe each network's feature space rather
than a sample of it. :class:`TeacherAgreement` tracks a student's agreement with the teacher's
matrix during training (the ``on_evaluate`` hook of :func:`idd_lib.engine.train`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from .data.datasets import eval_loader
from .losses import class_weights, pairwise_distances
from .rundir import read_metrics


@torch.no_grad()
def class_feature_sums(model: nn.Module, dataset, num_classes: int, max_images: int | None = None,
                       label_sampling: str = "nearest", device: str | torch.device = "cpu"):
    """Per-class sums of head features and pixel masses over a split -> (K x C sums, K masses).
    The model is evaluated in eval mode and left in the mode it came in (it may be mid-training)."""
    was_training = model.training
    model.eval().to(device)
    sums, mass = None, torch.zeros(num_classes, dtype=torch.float64)
    for images, labels in eval_loader(dataset, max_images):
        feat = model(images.to(device))["feat"].float()
        weights = class_weights(labels.to(device), num_classes, feat.shape[-2:], label_sampling)
        batch_sums = torch.einsum("bkp,bcp->kc", weights.flatten(2), feat.flatten(2)).double().cpu()
        sums = batch_sums if sums is None else sums + batch_sums
        mass += weights.sum((0, 2, 3)).double().cpu()
    model.train(was_training)
    if sums is None:
        raise ValueError("dataset: no images to accumulate class centres over")
    return sums, mass


def distance_matrix(sums: torch.Tensor, mass: torch.Tensor, metric: str = "euclidean",
                    normalize: bool = True) -> np.ndarray:
    """Centre distances ``K x K`` from accumulated sums; absent classes are NaN. ``normalize``
    divides by the mean over off-diagonal present pairs (the IDD loss's ``mean`` option)."""
    present = mass > 0
    centres = sums / mass.clamp_min(1e-12)[:, None]
    d = pairwise_distances(centres[None].float(), metric)[0].double()
    off_diagonal = present[:, None] & present[None, :] & ~torch.eye(len(mass), dtype=torch.bool)
    if normalize and off_diagonal.any():
        d = d / d[off_diagonal].mean()
    d[~(present[:, None] & present[None, :])] = float("nan")
    return d.numpy()


def dataset_distance_matrices(models: Mapping[str, nn.Module], dataset, num_classes: int,
                              max_images: int | None = None, metric: str = "euclidean",
                              normalize: bool = True) -> dict[str, np.ndarray]:
    return {name: distance_matrix(*class_feature_sums(model, dataset, num_classes, max_images), metric, normalize)
            for name, model in models.items()}


AGREEMENT_KEYS = ("pearson", "spearman", "frobenius_rel")


def matrix_agreement(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Agreement of two distance matrices on their upper triangle (pairs present in both):
    Pearson, Spearman, and Frobenius distance relative to the teacher's norm. Correlations are
    NaN when fewer than 3 pairs are shared or one side is constant (e.g. collapsed features)."""
    if student.shape != teacher.shape or teacher.ndim != 2 or teacher.shape[0] != teacher.shape[1]:
        raise ValueError(f"student: expected a square matrix shaped like the teacher's {teacher.shape}, "
                         f"got {student.shape}")
    iu = np.triu_indices_from(teacher, k=1)
    s, t = student[iu], teacher[iu]
    ok = np.isfinite(s) & np.isfinite(t)
    s, t = s[ok], t[ok]
    frobenius = float(np.linalg.norm(s - t) / np.linalg.norm(t)) if len(t) and np.any(t) else float("nan")
    if len(s) < 3 or np.ptp(s) == 0 or np.ptp(t) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "frobenius_rel": frobenius}
    return {"pearson": float(stats.pearsonr(s, t)[0]), "spearman": float(stats.spearmanr(s, t)[0]),
            "frobenius_rel": frobenius}


class TeacherAgreement:
    """``on_evaluate`` hook of :func:`idd_lib.engine.train`: the agreement of the student's
    dataset-level distance matrix with the teacher's, as ``agreement/<key>`` numbers.

    The teacher's matrix is computed once, at the first call, on the device the student is on;
    the student's at every call, over the same ``max_images`` images of ``dataset``.
    """

    def __init__(self, teacher: nn.Module, dataset, num_classes: int, max_images: int | None = None):
        self.teacher, self.dataset, self.num_classes, self.max_images = teacher, dataset, num_classes, max_images
        self.reference: np.ndarray | None = None

    def __call__(self, model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        if self.reference is None:
            self.reference = distance_matrix(*class_feature_sums(self.teacher, self.dataset, self.num_classes,
                                                                 self.max_images, device=device))
        student = distance_matrix(*class_feature_sums(model, self.dataset, self.num_classes, self.max_images,
                                                      device=device))
        return {f"agreement/{k}": v for k, v in matrix_agreement(student, self.reference).items()}


def agreement_history(results: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Agreement over training of finished runs (their ``metrics.jsonl``): one row per (run,
    validation step) with ``method`` (label, tag included), ``seed``, ``step`` and the agreement keys."""
    rows = []
    for result in results:
        label = result["method"] + (f" [{result['tag']}]" if result.get("tag") else "")
        for row in read_metrics(result["run_dir"]):
            if "agreement/pearson" in row:
                rows.append({"method": label, "seed": result["seed"], "step": row["step"],
                             **{k: row[f"agreement/{k}"] for k in AGREEMENT_KEYS}})
    return pd.DataFrame(rows, columns=["method", "seed", "step", *AGREEMENT_KEYS])


def sample_pixels(labels: torch.Tensor, per_class: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Class-balanced flat pixel indices into ``labels`` (N x h x w): ``per_class`` per present class.
    Classes with fewer pixels are sampled with replacement (peers' code crashed there)."""
    g = torch.Generator().manual_seed(seed)
    flat = labels.flatten()
    counts = torch.bincount(flat[flat < num_classes], minlength=num_classes)
    present = (counts > 0).nonzero().squeeze(1)
    # rank pixels of each class in a random order, then draw uniform ranks per class (vectorised)
    order = torch.randperm(len(flat), generator=g)
    shuffled = flat[order]
    keep = shuffled < num_classes
    order, shuffled = order[keep], shuffled[keep]
    by_class = torch.argsort(shuffled, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    ranks = (torch.rand(len(present), per_class, generator=g) * counts[present, None]).long()
    picks = order[by_class[(starts[present, None] + ranks).flatten()]]
    return picks


@torch.no_grad()
def pixel_features(models: Mapping[str, nn.Module], dataset, num_classes: int, per_class: int,
                   max_images: int | None = None, seed: int = 0, device="cpu", max_points: int | None = None):
    """Features of the same class-balanced pixels for every model: ({name: N x C}, labels N).
    Labels are nearest-sampled to the feature size of the first model. ``max_points`` caps the
    sample (t-SNE time grows faster than linearly with it) by lowering ``per_class``."""
    if max_points is not None:
        per_class = min(per_class, max(1, max_points // num_classes))
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    all_labels = []
    for images, labels in eval_loader(dataset, max_images):
        size = None
        for name, model in models.items():
            f = model.eval().to(device)(images.to(device))["feat"].float().cpu()
            size = size or f.shape[-2:]
            if f.shape[-2:] != size:
                f = torch.nn.functional.interpolate(f, size=size, mode="bilinear", align_corners=False)
            feats[name].append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        all_labels.append(torch.nn.functional.interpolate(labels[:, None].float(), size=size,
                                                          mode="nearest")[:, 0].long().flatten())
    labels = torch.cat(all_labels)  # flat: images of a mixed-size split have feature maps of several sizes
    picks = sample_pixels(labels, per_class, num_classes, seed)
    return {name: torch.cat(f)[picks].numpy() for name, f in feats.items()}, labels[picks].numpy()


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA init) of standardised features."""
    from sklearn.manifold import TSNE
    x = (features - features.mean(0)) / (features.std(0) + 1e-6)
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
