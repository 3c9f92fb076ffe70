"""How methods and metrics are named and ordered in figures and printed tables.

Files keep the registry's names (``idd+pid``, ``loss/ce``): these are for readers. The order is a
paper's: the teacher, the baseline, KD, the competing methods in the registry's order, then the
IDD family.
"""
from __future__ import annotations

from collections.abc import Iterable

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
