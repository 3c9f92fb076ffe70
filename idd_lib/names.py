"""How methods, metrics and table columns are named and ordered in figures and printed tables.

Files keep the registry's names (``idd+pid``, ``loss/ce``): these are for readers. The order is a
paper's: the teacher, the baseline, KD, the competing methods in the registry's order, then the
IDD family.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from .losses import METHODS

IDD_FAMILY = ("idd-only", "idd", "pid", "idd+pid")   # this study's methods; every other one competes
TEACHER = "teacher"

METHOD_LABELS = {
    "teacher": "Teacher", "baseline": "Baseline", "kd": "KD", "idd-only": "IDD only", "idd": "IDD",
    "pid": "PID", "idd+pid": "IDD+PID", "pa": "SKD pair-wise", "ho": "SKD adversarial", "ifv": "IFV",
    "cwd": "CWD", "cwd-feat": "CWD (features)", "cirkd-mb": "CIRKD mini-batch", "cirkd-mem": "CIRKD memory",
    "skd": "SKD", "ifvd": "IFVD", "cwd-cirkd": "CWD (CIRKD recipe)", "cirkd": "CIRKD", "dist": "DIST",
    "kd-ls": "KD + logit std.", "bpkd": "BPKD", "af-dcd": "Af-DCD",
}
METRIC_LABELS = {"loss/total": "total loss", "loss/ce": "cross-entropy", "loss/kd": "KD loss",
                 "loss/idd": "IDD loss", "loss/pid": "PID loss", "miou": "val mIoU (%)"}


def method_label(name: str) -> str:
    """``idd+pid`` -> ``IDD+PID``; a variant ``cirkd [tag]`` keeps its tag; unknown names as given."""
    base, sep, rest = name.partition(" [")
    return METHOD_LABELS.get(base, base) + (f" [{rest}" if sep else "")


def metric_label(key: str) -> str:
    """``loss/ce`` -> ``cross-entropy``; another ``loss/<term>`` -> ``<term> loss``."""
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    return f"{key.split('/', 1)[1]} loss" if key.startswith("loss/") else key


def method_rank(name: str) -> int:
    base = name.partition(" [")[0]
    order = [TEACHER, "baseline", "kd", *(m for m in METHODS if m not in {"baseline", "kd", *IDD_FAMILY}),
             *IDD_FAMILY]
    return order.index(base) if base in order else len(order)


def in_method_order(names: Iterable[str]) -> list[str]:
    """``names`` in the paper's order (unknown ones last, as given)."""
    return sorted(names, key=method_rank)


# ---------------------------------------------------------------- printed tables

COLUMN_LABELS = {"seeds": "seeds", "ci95": "95% CI ±", "delta_vs_baseline": "Δ vs baseline",
                 "p_vs_baseline": "p vs baseline", "best_other": "best other", "delta_vs_best_other": "Δ vs best other",
                 "p_vs_best_other": "p vs best other", "p_holm": "p (Holm)", "ci_low": "CI low", "ci_high": "CI high",
                 "gap_closed": "gap closed", "alpha_step": "Holm step α", "mdd": "MDD", "seeds_needed": "seeds needed",
                 "p_tost": "TOST p", "p_tost_holm": "TOST p (Holm)", "sesoi": "SESOI"}
# words of generated column names (``miou_vs_idd``, ``r2_mean``) as a paper spells them
COLUMN_WORDS = {"miou": "mIoU", "r2": "R²", "idd": "IDD", "pid": "PID", "kd": "KD", "frobenius": "Frobenius"}
METHOD_COLUMNS = ("method", "network", "reference", "best other")
_MEAN_TEXT = r"^-?\d+(\.\d+)?( ± \d+(\.\d+)?)?$"   # a "mean ± std" column (summarize's label column)


def column_label(column):
    """``delta_vs_baseline`` -> ``Δ vs baseline``, ``miou_vs_idd`` -> ``mIoU vs IDD``; other names as given."""
    if not isinstance(column, str):
        return column
    return COLUMN_LABELS.get(column) or " ".join(COLUMN_WORDS.get(word, word) for word in column.split("_"))


def is_method_column(label) -> bool:
    """A printed column whose values name methods (``best other``, also ``pearson best other``)."""
    return isinstance(label, str) and (label in METHOD_COLUMNS or label.endswith(" best other"))


def printed(frame: pd.DataFrame, index: bool = False) -> pd.DataFrame:
    """A table as a paper prints it (Markdown and LaTeX; the CSV keeps the data's names): columns of
    a single seed's missing statistics dropped, mean and std dropped beside their "mean ± std" column,
    readable column and method names, rows in the paper's method order."""
    shown = frame.dropna(axis=1, how="all")
    words = [c for c in shown.columns if not pd.api.types.is_numeric_dtype(shown[c])]
    text = [c for c in words if shown[c].astype(str).str.match(_MEAN_TEXT).all()]
    if text and {"mean", "std"} & set(shown.columns):
        shown = shown.drop(columns=[c for c in ("mean", "std") if c in shown])
    shown = shown.rename(columns=column_label)
    for column in shown.columns:
        if is_method_column(column) and not pd.api.types.is_numeric_dtype(shown[column]):
            shown[column] = shown[column].map(lambda v: method_label(v) if isinstance(v, str) else v)
    if index and shown.index.name in METHOD_COLUMNS:
        shown.index = [method_label(v) if isinstance(v, str) else v for v in shown.index]
        shown.index.name = frame.index.name
    key = "method" if "method" in frame else "network" if "network" in frame else None
    if key and "family" not in frame:
        shown = shown.iloc[np.argsort([method_rank(str(v)) for v in frame[key]], kind="stable")]
    return shown


def blank_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing statistics (the baseline's difference to itself, a test at one seed) as blank cells, not nan."""
    return frame.astype(object).where(frame.notna(), "")


def p_text(p: float | None) -> str:
    """A p-value as a paper prints it: three decimals, '<0.001' below (never 'p = 0.000'); blank if missing."""
    return "" if pd.isna(p) else "<0.001" if p < 0.0005 else f"{p:.3f}"
