"""Statistics that can decide: paired differences with 95% t-intervals, Holm-corrected p-values,
the smallest difference the design can detect, and the share of the teacher-student gap closed.

Runs of two methods are paired by seed (same data order, same initialisation draws). For the
differences ``d_s = a_s - b_s`` over the ``n`` shared seeds: effect ``mean(d)``, 95% interval
``mean(d) ± t_{0.975, n-1} sd(d)/sqrt(n)``, two-sided paired t-test p-value (scipy's
``ttest_rel``). Families of comparisons are corrected with Holm's step-down method
(statsmodels ``multipletests``). The minimum detectable difference at the design's ``n`` is the
paired difference the row's own test finds with power 0.8, given the observed ``sd(d)``
(statsmodels ``TTestPower``): ``d_min = effect_size(n, alpha_step, 0.8) x sd(d)``, at the alpha
Holm's step-down procedure tests that row at (``alpha_step = 0.05 / (m - rank)`` for the row of
rank ``rank`` among the family's ``m`` sorted p-values), since that is the alpha the decision uses.
Rows that decide nothing also say how many seeds a test at that alpha would need to find the
smallest effect of interest (:data:`MIOU_SESOI` for mIoU) with power 0.8.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
POWER = 0.8
MIOU_SESOI = 1.0  # mIoU points: the smallest accuracy difference of interest (docs/analysis.md)
MAX_SEEDS = 100  # seeds_needed reports more than this as inf


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


def holm_step_alphas(pvalues: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """The alpha each p-value is compared with at its step of Holm's procedure: ``alpha / (m - rank)``
    for the ``rank``-th smallest of the ``m`` valid p-values (ties keep their order); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    steps = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    steps[order] = alpha / (len(order) - np.arange(len(order)))
    return steps


def minimum_detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER,
                                  alternative: str = "two-sided") -> float:
    """The paired difference a t-test on ``n`` seeds detects with ``power`` at ``alpha``
    (``alternative`` as statsmodels names it: "two-sided" or "larger"), for differences of
    standard deviation ``sd``; NaN below 2 seeds, without a spread or without an alpha."""
    from statsmodels.stats.power import TTestPower

    if n < 2 or not sd > 0 or not alpha > 0:
        return float("nan")
    size = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative=alternative)
    return float(size) * sd


def seeds_needed(sd: float, effect: float = MIOU_SESOI, alpha: float = ALPHA, power: float = POWER,
                 alternative: str = "two-sided") -> float:
    """The fewest seeds with which a paired t-test at ``alpha`` finds ``effect`` with ``power``, given
    differences of standard deviation ``sd``; NaN without a spread, inf beyond :data:`MAX_SEEDS`."""
    from statsmodels.stats.power import TTestPower

    if not sd > 0 or not alpha > 0 or not effect > 0:
        return float("nan")
    test, size = TTestPower(), effect / sd
    if test.power(effect_size=size, nobs=2, alpha=alpha, alternative=alternative) >= power:
        return 2.0
    try:  # the root of power(n) = target, then the first whole n at or above it
        with warnings.catch_warnings():  # no root is answered below; statsmodels' warning would say it again
            warnings.simplefilter("ignore")
            root = test.solve_power(effect_size=size, nobs=None, alpha=alpha, power=power, alternative=alternative)
        n = max(2, math.ceil(float(root)))
    except (ValueError, RuntimeError, OverflowError):  # no root (NaN): beyond any practical n
        return math.inf
    if n > MAX_SEEDS:
        return math.inf
    while n > 2 and test.power(effect_size=size, nobs=n - 1, alpha=alpha, alternative=alternative) >= power:
        n -= 1  # the root finder's tolerance can overshoot by one
    return float(n)


def gap_closed(student: float, baseline: float, teacher: float) -> float:
    """Share of the teacher-baseline gap a student closes: (student - baseline) / (teacher - baseline)."""
    gap = teacher - baseline
    return float((student - baseline) / gap) if gap else float("nan")


COMPARE_COLUMNS = ["family", "method", "reference", "n", "effect", "ci_low", "ci_high", "p", "p_holm", "sd",
                   "alpha_step", "mdd", "seeds_needed"]


def compare(by_seed: dict[str, pd.Series], pairs: Sequence[tuple[str, str]], family: str) -> pd.DataFrame:
    """One row per ``(method, reference)`` pair with the paired statistics, the Holm correction
    across the pairs (one family), the alpha of the row's Holm step, the minimum detectable
    difference at that alpha, and, for rows Holm does not reject, the seeds that would find
    :data:`MIOU_SESOI` at that alpha."""
    rows = [{"family": family, "method": method, "reference": reference,
             **paired_difference(by_seed[method], by_seed[reference])} for method, reference in pairs]
    table = pd.DataFrame(rows, columns=COMPARE_COLUMNS[:8] + ["sd"])
    p = table["p"].to_numpy(dtype=float)
    table["p_holm"], table["alpha_step"] = holm(p), holm_step_alphas(p)
    table["mdd"] = [minimum_detectable_difference(sd, n, alpha) for sd, n, alpha
                    in zip(table["sd"], table["n"], table["alpha_step"])]
    table["seeds_needed"] = [float("nan") if held < ALPHA else seeds_needed(sd, MIOU_SESOI, alpha)
                             for held, sd, alpha in zip(table["p_holm"], table["sd"], table["alpha_step"])]
    return table[COMPARE_COLUMNS]


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
