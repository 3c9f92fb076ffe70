"""Statistics of the comparisons (idd_lib/comparisons.py) against independent computations."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, optimize, stats

from idd_lib import comparisons

A = pd.Series([50.0, 52.0, 51.0, 53.0, 49.0], index=range(5))
B = pd.Series([48.0, 51.0, 49.0, 50.0, 48.0], index=range(5))


def test_paired_difference_by_hand_and_scipy():
    # d = 2 1 2 3 1: mean 1.8, sd sqrt(0.7), t = 1.8 / (sqrt(0.7) / sqrt(5))
    result = comparisons.paired_difference(A, B)
    sd = math.sqrt(0.7)
    half = 2.7764451051977987 * sd / math.sqrt(5)          # t_{0.975, 4}
    assert result["n"] == 5 and result["effect"] == pytest.approx(1.8)
    assert result["sd"] == pytest.approx(sd)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((1.8 - half, 1.8 + half))
    t = 1.8 / (sd / math.sqrt(5))
    assert result["p"] == pytest.approx(2 * stats.t.sf(t, 4)) == pytest.approx(stats.ttest_rel(A, B).pvalue)


def test_paired_difference_pairs_by_seed_only():
    shuffled = B.iloc[::-1]                                   # same seeds, other order
    assert comparisons.paired_difference(A, shuffled)["effect"] == pytest.approx(1.8)
    short = comparisons.paired_difference(A, B.iloc[:1])
    assert short["n"] == 1 and math.isnan(short["p"]) and math.isnan(short["ci_low"])


def test_holm_by_hand_with_nan():
    # sorted 0.01 0.03 0.04 0.5 -> x4 x3 x2 x1 = 0.04 0.09 0.08 0.5, then running maximum
    adjusted = comparisons.holm([0.01, 0.04, float("nan"), 0.03, 0.5])
    assert adjusted[[0, 1, 3, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert math.isnan(adjusted[2])


def _power(d, n, alpha=0.05):
    """Two-sided one-sample t power from its definition: T = (Z + d sqrt(n)) / sqrt(V / df), V ~ chi2(df)."""
    df, shift = n - 1, d * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)

    def rejected(v):
        scale = critical * math.sqrt(v / df)
        return (stats.norm.sf(scale - shift) + stats.norm.cdf(-scale - shift)) * stats.chi2.pdf(v, df)
    return integrate.quad(rejected, 0, np.inf)[0]


@pytest.mark.parametrize("n", [3, 5, 10])
def test_minimum_detectable_difference_matches_the_noncentral_t(n):
    d = optimize.brentq(lambda x: _power(x, n) - 0.8, 0.1, 10)
    assert comparisons.minimum_detectable_difference(2.0, n) == pytest.approx(2.0 * d, rel=1e-4)
    assert math.isnan(comparisons.minimum_detectable_difference(2.0, 1))


def test_gap_closed():
    assert comparisons.gap_closed(50.0, 45.0, 55.0) == pytest.approx(0.5)
    assert math.isnan(comparisons.gap_closed(50.0, 45.0, 45.0))


def test_comparison_table_two_holm_families():
    rng = np.random.default_rng(0)
    rows = [{"label": m, "seed": s, "miou": base + shift + rng.normal(0, 0.3)}
            for m, shift in (("baseline", 0), ("kd", 1), ("idd", 2), ("cwd", 1.5)) for s, base in enumerate([40, 42, 41, 43, 40])]
    table = comparisons.comparison_table(pd.DataFrame(rows), teacher=50.0)
    vs_base = table[table["family"] == "vs baseline"].set_index("method")
    assert list(vs_base.index) == ["kd", "idd", "cwd"]
    assert vs_base["p_holm"].to_numpy() == pytest.approx(comparisons.holm(vs_base["p"].to_numpy()))
    frame = pd.DataFrame(rows)
    means = frame.groupby("label")["miou"].mean()
    assert vs_base.loc["idd", "gap_closed"] == pytest.approx((means["idd"] - means["baseline"]) / (50 - means["baseline"]))
    focus = table[table["family"] == "idd vs others"]
    assert list(focus["reference"]) == ["kd", "cwd"] and (focus["method"] == "idd").all()
    assert focus["p_holm"].to_numpy() == pytest.approx(comparisons.holm(focus["p"].to_numpy()))


def test_holm_step_alphas_are_the_thresholds_holm_compares_each_p_with():
    p = [0.04, np.nan, 0.001, 0.02, 0.3]
    steps = comparisons.holm_step_alphas(p)
    assert steps[2] == pytest.approx(0.05 / 4) and steps[3] == pytest.approx(0.05 / 3)
    assert steps[0] == pytest.approx(0.05 / 2) and steps[4] == pytest.approx(0.05) and math.isnan(steps[1])
    # Holm rejects exactly the rows before the first p above its step (the step-down rule)
    from statsmodels.stats.multitest import multipletests
    valid = np.array([0.04, 0.001, 0.02, 0.3])
    rejected = multipletests(valid, alpha=0.05, method="holm")[0]
    order = np.argsort(valid)
    below = valid[order] <= comparisons.holm_step_alphas(valid)[order]
    assert list(rejected[order]) == list(np.cumprod(below).astype(bool))


def test_seeds_needed_is_the_first_n_with_the_power():
    from statsmodels.stats.power import TTestPower
    n = comparisons.seeds_needed(1.5, effect=1.0, alpha=0.0125)
    power = [TTestPower().power(effect_size=1 / 1.5, nobs=k, alpha=0.0125) for k in (n - 1, n)]
    assert power[0] < 0.8 <= power[1]
    assert comparisons.seeds_needed(1e-3, effect=1.0) == 2 and math.isinf(comparisons.seeds_needed(100.0, effect=1.0))
    assert math.isnan(comparisons.seeds_needed(0.0))


def test_compare_gives_the_mdd_at_holm_step_and_seeds_for_rows_it_does_not_reject():
    rng = np.random.default_rng(3)
    by_seed = {m: pd.Series(40 + shift + rng.normal(0, 0.8, 5)) for m, shift in (("baseline", 0), ("kd", 0.3), ("idd", 4))}
    table = comparisons.compare(by_seed, [("kd", "baseline"), ("idd", "baseline")], "vs baseline").set_index("method")
    assert table.loc["idd", "alpha_step"] == pytest.approx(0.025) and table.loc["kd", "alpha_step"] == pytest.approx(0.05)
    for method in table.index:
        row = table.loc[method]
        assert row["mdd"] == pytest.approx(comparisons.minimum_detectable_difference(row["sd"], 5, row["alpha_step"]))
    assert table.loc["idd", "p_holm"] < 0.05 and math.isnan(table.loc["idd", "seeds_needed"])
    assert table.loc["kd", "seeds_needed"] == comparisons.seeds_needed(table.loc["kd", "sd"], 1.0, 0.05)
