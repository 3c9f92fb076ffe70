"""Figures of the study (matplotlib/seaborn); every figure is saved as PNG and PDF."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "ipympl")) else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from .names import in_method_order, method_label, method_rank, metric_label  # noqa: E402

SAVE_DPI = 150


def _spread(table, column: str, std: str | None = None):
    """The error bars of ``column``: its ``<column> std`` (or ``std``) column, None where no row has
    one (a single seed has no spread to draw)."""
    std = std or f"{column} std"
    if std not in table or not table[std].notna().any():
        return None
    return table[std].fillna(0).to_numpy()


def save_figure(fig, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=SAVE_DPI, bbox_inches="tight")
    return paths


def distance_heatmaps(matrices: Mapping[str, np.ndarray], class_names: Sequence[str], reference: str = "teacher",
                      agreement: Mapping[str, float] | None = None):
    """Row 1: each network's normalised distance matrix on one shared colour scale.
    Row 2: difference to the reference (teacher), on one shared symmetric scale.
    ``agreement`` (e.g. Pearson r with the teacher per network) is added to the titles."""
    names = in_method_order(matrices)
    if reference not in matrices:
        raise ValueError(f"reference: {reference!r} is not among the matrices {names}")
    n = len(names)
    # a thin last column holds the two colour bars, so every heatmap keeps the same size
    fig, axes = plt.subplots(2, n + 1, figsize=(3.6 * n + 0.8, 7.2), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * n + [0.06]})
    values = np.concatenate([m[np.isfinite(m)] for m in matrices.values()])
    vmax = float(np.nanpercentile(values, 99)) if values.size else 1.0
    diffs = {name: matrices[name] - matrices[reference] for name in names}
    dmax = max(float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 0.0 for d in diffs.values()) or 1.0
    others = [name for name in names if name != reference]
    for col, name in enumerate(names):
        sns.heatmap(matrices[name], ax=axes[0, col], vmin=0, vmax=vmax, cmap="viridis", square=True,
                    xticklabels=class_names, yticklabels=class_names if col == 0 else False,
                    cbar=col == 0, cbar_ax=axes[0, n], cbar_kws={"label": "distance / mean distance"})
        score = f" (r = {agreement[name]:.2f})" if agreement and name in agreement and name != reference else ""
        axes[0, col].set_title(method_label(name) + score)
        if name == reference:
            axes[1, col].axis("off")
            axes[1, col].text(0.5, 0.5, f"{method_label(reference)}\n(reference)", ha="center", va="center")
            continue
        sns.heatmap(diffs[name], ax=axes[1, col], vmin=-dmax, vmax=dmax, cmap="RdBu_r", center=0, square=True,
                    xticklabels=class_names, yticklabels=class_names if name == others[0] else False,
                    cbar=name == others[0], cbar_ax=axes[1, n], cbar_kws={"label": f"difference to {reference}"})
        axes[1, col].set_title(f"{method_label(name)} − {method_label(reference)}")
    if not others:
        axes[1, n].axis("off")
    for ax in axes[:, :n].flat:
        ax.tick_params(axis="x", labelrotation=90)
        ax.tick_params(axis="y", labelrotation=0)
    fig.suptitle("Inter-class distances of class centres over the validation set (normalised by the mean "
                 "off-diagonal distance; blank: class absent)")
    fig.tight_layout()
    return fig


def agreement_curves(history, keys: Sequence[str] = ("pearson", "frobenius_rel")):
    """Agreement with the teacher's distance matrix over training, one line per method: mean over
    seeds, band = min..max over seeds. ``history``: :func:`idd_lib.analysis.agreement_history`."""
    labels = {"pearson": "Pearson r (higher: closer)", "spearman": "Spearman rho (higher: closer)",
              "frobenius_rel": "relative Frobenius distance (lower: closer)"}
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        groups = dict(tuple(history.groupby("method", sort=False)))
        for method in in_method_order(groups):
            stats = groups[method].groupby("step")[key].agg(["mean", "min", "max", "count"]).reset_index()
            runs = int(stats["count"].max())
            line, = ax.plot(stats["step"], stats["mean"], marker="o", ms=3,
                            label=f"{method_label(method)} ({runs} run{'s' if runs > 1 else ''})")
            ax.fill_between(stats["step"], stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_ylabel(labels.get(key, key))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Agreement of each student's inter-class distance matrix with the teacher's during training")
    fig.tight_layout()
    return fig


def probe_bars(table, maps: Sequence[str] = ("x", "y", "gaussian", "mean")):
    """Position-probe R² per network (groups) and map (bars): mean over seeds, error bars = std.
    ``table`` has a ``network`` column and ``<map>`` / ``<map> std`` columns."""
    table = table.iloc[np.argsort([method_rank(n) for n in table["network"]], kind="stable")]
    networks = list(table["network"])
    width = 0.8 / len(maps)
    fig, ax = plt.subplots(figsize=(1.4 * len(networks) + 2.5, 3.6))
    x = np.arange(len(networks))
    for i, name in enumerate(maps):
        ax.bar(x + (i - (len(maps) - 1) / 2) * width, table[name], width, yerr=_spread(table, name), capsize=2, label=name)
    ax.set_xticks(x, [method_label(n) for n in networks], rotation=20, ha="right")
    ax.set_ylabel("held-out R²")
    ax.set_title("Position probe on frozen features: R² of the position maps", fontsize=10)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylim(min(0.0, float(np.nanmin(table[list(maps)].to_numpy())) - 0.05), 1.0)
    ax.legend(title="position map", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # clear of the bars
    fig.tight_layout()
    return fig


def sweep_panels(table, x: str = "prior", metrics: Sequence[tuple[str, str]] = (
        ("miou", "val mIoU (%)"), ("r2_mean", "position probe R² (mean of maps)"))):
    """One panel per metric against the swept knob, one line per network (teacher dashed);
    ``table`` rows: ``network``, ``x`` and each metric's mean (with optional ``<metric> std``)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.8 * len(metrics), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        groups = dict(tuple(table.groupby("network", sort=False)))
        for network in in_method_order(groups):
            rows = groups[network].sort_values(x)
            ax.errorbar(rows[x], rows[key], yerr=_spread(rows, key), marker="o", capsize=3,
                        label=method_label(network),
                        ls="--" if network == "teacher" else "-", color="black" if network == "teacher" else None)
        ax.set_xlabel("position prior (synthetic.position_prior)" if x == "prior" else x)
        ax.set_xticks(sorted(table[x].unique()))
        ax.set_ylabel(label)
        ax.set_title(f"{label} against the position prior" if x == "prior" else f"{label} against {x}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def tsne_panels(embeddings: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str],
                palette: Sequence[tuple[int, int, int]]):
    """Side-by-side t-SNE maps of the same pixels, coloured by class, class centres marked."""
    n = len(embeddings)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.4), squeeze=False)
    colours = np.asarray(palette, dtype=float) / 255.0
    for ax, name in zip(axes[0], in_method_order(embeddings)):
        emb = embeddings[name]
        ax.scatter(emb[:, 0], emb[:, 1], c=colours[labels], s=5, alpha=0.7, linewidths=0)
        for k in np.unique(labels):
            centre = emb[labels == k].mean(0)
            ax.scatter(*centre, c=[colours[k]], s=140, marker="*", edgecolors="black", linewidths=0.8)
        ax.set_title(method_label(name))
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[k], label=class_names[k])
               for k in np.unique(labels)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 9), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def miou_bars(summary, teacher_miou: float | None = None):
    """Mean mIoU per method in the paper's order, seed standard deviation as error bars (none at one seed)."""
    summary = summary.iloc[np.argsort([method_rank(m) for m in summary["method"]], kind="stable")]
    fig, ax = plt.subplots(figsize=(1.2 * len(summary) + 2, 3.6))
    ax.bar([method_label(m) for m in summary["method"]], summary["mean"], yerr=_spread(summary, "mean", "std"),
           capsize=4, color="tab:blue")
    ax.tick_params(axis="x", labelrotation=20)
    if teacher_miou is not None:
        ax.axhline(teacher_miou, color="black", ls="--", label=f"teacher {teacher_miou:.1f}")
        ax.legend(loc="lower right")
    ax.set_ylabel("val mIoU (%)")
    ax.set_ylim(0, None)  # bars from 0: a cut axis would magnify the gaps between methods
    ax.set_title("Students: val mIoU, mean over seeds", fontsize=10)
    fig.tight_layout()
    return fig


def training_curves(histories: Mapping[str, Sequence[dict]], keys: Sequence[str] = ("loss/total",)):
    """One panel per logged key (e.g. each loss term), one line per run, integer step ticks."""
    from matplotlib.ticker import MaxNLocator

    keys = [keys] if isinstance(keys, str) else list(keys)
    columns = min(len(keys), 3)
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, history in histories.items():
            points = [(r["step"], r[key]) for r in history if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=method_label(name))
        ax.set_title(metric_label(key), fontsize=10)
        ax.set_ylabel("loss" if key.startswith("loss/") else metric_label(key))
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig
