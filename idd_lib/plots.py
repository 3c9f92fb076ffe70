"""Figures of the study (matplotlib/seaborn); every figure is saved as PNG and PDF."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "ipympl")) else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402


def save_figure(fig, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def distance_heatmaps(matrices: Mapping[str, np.ndarray], class_names: Sequence[str], reference: str = "teacher"):
    """Row 1: each network's normalised distance matrix on one shared colour scale.
    Row 2: difference to the reference (teacher), on one shared symmetric scale."""
    names = list(matrices)
    n = len(names)
    fig, axes = plt.subplots(2, n, figsize=(3.6 * n, 6.8), squeeze=False)
    values = np.concatenate([m[np.isfinite(m)] for m in matrices.values()])
    vmax = float(np.nanpercentile(values, 99)) if values.size else 1.0
    diffs = {name: matrices[name] - matrices[reference] for name in names}
    dmax = max(float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 0.0 for d in diffs.values()) or 1.0
    for col, name in enumerate(names):
        sns.heatmap(matrices[name], ax=axes[0, col], vmin=0, vmax=vmax, cmap="viridis", square=True,
                    xticklabels=class_names, yticklabels=class_names if col == 0 else False,
                    cbar=col == n - 1)
        axes[0, col].set_title(name)
        if name == reference:
            axes[1, col].axis("off")
            axes[1, col].text(0.5, 0.5, f"{reference}\n(reference)", ha="center", va="center")
            continue
        sns.heatmap(diffs[name], ax=axes[1, col], vmin=-dmax, vmax=dmax, cmap="RdBu_r", center=0, square=True,
                    xticklabels=class_names, yticklabels=class_names if col == 0 else False, cbar=col == n - 1)
        axes[1, col].set_title(f"{name} - {reference}")
    fig.suptitle("Inter-class distances of class centres (normalised by mean off-diagonal distance)")
    fig.tight_layout()
    return fig


def tsne_panels(embeddings: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str],
                palette: Sequence[tuple[int, int, int]]):
    """Side-by-side t-SNE maps of the same pixels, coloured by class, class centres marked."""
    n = len(embeddings)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.4), squeeze=False)
    colours = np.asarray(palette, dtype=float) / 255.0
    for ax, (name, emb) in zip(axes[0], embeddings.items()):
        ax.scatter(emb[:, 0], emb[:, 1], c=colours[labels], s=5, alpha=0.7, linewidths=0)
        for k in np.unique(labels):
            centre = emb[labels == k].mean(0)
            ax.scatter(*centre, c=[colours[k]], s=140, marker="*", edgecolors="black", linewidths=0.8)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[k], label=class_names[k])
               for k in np.unique(labels)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 9), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def miou_bars(summary, teacher_miou: float | None = None):
    """Mean mIoU per method with seed standard deviation as error bars."""
    fig, ax = plt.subplots(figsize=(1.2 * len(summary) + 2, 3.6))
    ax.bar(summary["method"], summary["mean"], yerr=summary["std"].fillna(0), capsize=4, color="tab:blue")
    if teacher_miou is not None:
        ax.axhline(teacher_miou, color="black", ls="--", label=f"teacher {teacher_miou:.1f}")
        ax.legend(loc="lower right")
    ax.set_ylabel("val mIoU (%)")
    low = float(np.nanmin(summary["mean"] - summary["std"].fillna(0)))
    ax.set_ylim(max(0.0, low - 5), None)
    fig.tight_layout()
    return fig


def training_curves(histories: Mapping[str, Sequence[dict]], key: str = "loss/total"):
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, rows in histories.items():
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
