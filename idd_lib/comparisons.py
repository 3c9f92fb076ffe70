"""Statistics that can decide: paired differences with 95% t-intervals, Holm-corrected p-values,
the smallest difference the design can detect, and the share of the teacher-student gap closed.

Runs of two methods are paired by seed (same data order, same initialisation draws). For the
differences ``d_s = a_s - b_s`` over the ``n`` shared seeds: effect ``mean(d)``, 95% interval
``mean(d) ± t_{0.975, n-1} sd(d)/sqrt(n)``, two-sided paired t-test p-value (scipy's
``ttest_rel``). Families of comparisons are corrected with Holm's step-down method
(statsmodels ``multipletests``). The minimum detectable difference at the design's ``n`` is the
paired difference a two-sided test at alpha 0.05 finds with power 0.8, given the observed
``sd(d)`` (statsmodels ``TTestPower``): ``d_min = effect_size(n, 0.05, 0.8) x sd(d)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
POWER = 0.8


def paired_difference(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """Effect, 95% CI, p-value, n and sd of the seed-paired differences ``a - b`` (seed-indexed
    series; only shared seeds count). NaN where fewer than 2 seeds are shared (and p, CI NaN when
    every difference is equal)."""
    a, b = a.align(b, join="inner")
    keep = a.notna() & b.notna()
    a, b = a[keep].astype(float), b[keep].astype(float)
    n, diff = len(a), (a - b).to_numpy()
    effect = float(diff.mean()) if n else float("nan")
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    if n < 2 or not sd > 0:
        return {"n": n, "effect": effect, "ci_low": float("nan"), "ci_high": float("nan"), "p": float("nan"),
                "sd": sd}
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / np.sqrt(n))
    return {"n": n, "effect": effect, "ci_low": effect - half, "ci_high": effect + half,
            "p": float(stats.ttest_rel(a, b).pvalue), "sd": sd}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values of one family; NaN entries stay NaN and are not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = ~np.isnan(p)
    if valid.any():
        adjusted[valid] = multipletests(p[valid], alpha=ALPHA, method="holm")[1]
    return adjusted


def minimum_detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The paired difference a two-sided t-test on ``n`` seeds detects with ``power`` at ``alpha``,
    for differences of standard deviation ``sd``; NaN below 2 seeds or without a spread."""
    from statsmodels.stats.power import TTestPower

    if n < 2 or not sd > 0:
        return float("nan")
    size = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(size) * sd


def gap_closed(student: float, baseline: float, teacher: float) -> float:
    """Share of the teacher-baseline gap a student closes: (student - baseline) / (teacher - baseline)."""
    gap = teacher - baseline
    return float((student - baseline) / gap) if gap else float("nan")


def compare(by_seed: dict[str, pd.Series], pairs: Sequence[tuple[str, str]], family: str) -> pd.DataFrame:
    """One row per ``(method, reference)`` pair with the paired statistics, the Holm correction
    across the pairs (one family) and the minimum detectable difference."""
    rows = []
    for method, reference in pairs:
        stat = paired_difference(by_seed[method], by_seed[reference])
        rows.append({"family": family, "method": method, "reference": reference, **stat,
                     "mdd": minimum_detectable_difference(stat["sd"], stat["n"])})
    table = pd.DataFrame(rows, columns=["family", "method", "reference", "n", "effect", "ci_low", "ci_high", "p",
                                        "sd", "mdd"])
    table.insert(table.columns.get_loc("p") + 1, "p_holm", holm(table["p"].to_numpy()) if len(table) else [])
    return table


def comparison_table(frame: pd.DataFrame, value: str = "miou", baseline: str = "baseline", focus: str = "idd",
                     teacher: float | None = None) -> pd.DataFrame:
    """Two Holm families on the ``label`` x ``seed`` runs of ``frame``: every method against the
    baseline (with the share of the teacher-baseline gap its mean closes, given ``teacher``), and
    ``focus`` against every other method except the baseline."""
    by_seed = {name: group.groupby("seed")[value].mean() for name, group in frame.groupby("label", sort=False)}
    parts = []
    if baseline in by_seed:
        vs_base = compare(by_seed, [(m, baseline) for m in by_seed if m != baseline], f"vs {baseline}")
        if teacher is not None:
            base = by_seed[baseline].mean()
            vs_base["gap_closed"] = [gap_closed(by_seed[m].mean(), base, teacher) for m in vs_base["method"]]
        parts.append(vs_base)
    if focus in by_seed:
        others = [(focus, m) for m in by_seed if m not in (focus, baseline)]
        parts.append(compare(by_seed, others, f"{focus} vs others"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
