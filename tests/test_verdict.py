"""The verdict's rows and readings (idd_lib/verdict.py) on synthetic result tables."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from idd_lib import comparisons, verdict

SEEDS = range(5)
NOISE = np.array([0.3, -0.2, 0.1, -0.4, 0.2])


def _runs(shift_miou, shift_pearson, tune_shift=None):
    """Default-setting runs: method -> mIoU shift and Pearson shift over a per-seed base."""
    rows = []
    for k, method in enumerate(shift_miou):
        noise = np.roll(NOISE, k) * (method != "kd")          # each method its own seed-to-seed noise
        for s in SEEDS:
            base = 40 + s
            rows.append({"method": method, "seed": s, "miou": base + shift_miou[method] + noise[s],
                         "tune_miou": base + (tune_shift or shift_miou)[method],
                         "pearson": 0.9 + shift_pearson.get(method, 0) + 0.001 * NOISE[s] * (method == "idd")})
    return pd.DataFrame(rows)


MIOU = {"baseline": 0.0, "kd": 1.0, "idd": 4.0, "idd+pid": 4.5, "cwd": 3.0, "skd": 2.0}
PEARSON = {"baseline": 0.0, "kd": 0.05, "idd": 0.02}           # idd below kd: not supported


def _probe(gain):
    rng = np.random.default_rng(1)
    return pd.DataFrame([{"network": n, "seed": s, "mean": 0.8 + (gain if n == "idd+pid" else 0) + rng.normal(0, 0.05)}
                         for n in ("idd", "idd+pid") for s in SEEDS])


def _sweep(gain_informative, gain_flat):
    rows = []
    for prior in (0.0, 1.0, 2.0):
        for s in SEEDS:
            gain = gain_flat if prior == 0 else gain_informative
            rows.append({"prior": prior, "network": "idd", "seed": s, "miou": 30 + s})
            rows.append({"prior": prior, "network": "idd+pid", "seed": s,
                         "miou": 30 + s + gain + 0.1 * NOISE[(s + int(prior)) % 5]})
    return pd.DataFrame(rows)


def test_each_reading_occurs_and_missing_rows_say_so():
    table = verdict.verdict_table(_runs(MIOU, PEARSON), probe=_probe(0.06), sweep=_sweep(2.0, 0.0), tuned=None)
    default = table[table["setting"] == "default"].set_index("claim")
    assert default.loc["a", "reading"] == "supported"                      # +3 mIoU on every seed
    assert default.loc["b vs kd", "reading"] == "not supported"            # idd's r below kd's
    assert default.loc["b vs baseline", "reading"] == "supported"
    assert default.loc["c", "reading"] == "inconclusive"                   # +0.06 R² under 0.05 noise
    assert default.loc["d", "reading"] == "supported"
    assert default.loc["e", "evidence"].endswith("idd+pid − cwd (strongest by tune mIoU)")
    tuned = table[table["setting"] == "tuned"]
    assert (tuned["reading"] == "missing").all() and tuned["evidence"].str.startswith("missing").all()


def test_holm_across_the_claims_of_a_setting_and_effects_by_hand():
    table = verdict.verdict_table(_runs(MIOU, PEARSON), probe=_probe(0.06), sweep=_sweep(2.0, 0.0))
    default = table[table["setting"] == "default"]
    assert default["p_holm"].to_numpy(dtype=float) == pytest.approx(comparisons.holm(default["p"].to_numpy(dtype=float)), nan_ok=True)
    row = default.set_index("claim").loc["a"]
    runs = _runs(MIOU, PEARSON)
    diff = runs[runs.method == "idd"].set_index("seed")["miou"] - runs[runs.method == "kd"].set_index("seed")["miou"]
    assert row["effect"] == pytest.approx(diff.mean()) and row["n"] == 5
    assert row["p"] == pytest.approx(stats.ttest_rel(diff + 0, 0 * diff, alternative="greater").pvalue)
    # TOST's upper test by hand: H0 mean(d) >= SESOI, one-sided t-test of d - SESOI
    assert row["p_tost"] == pytest.approx(stats.ttest_1samp(diff - row["sesoi"], 0, alternative="less").pvalue)
    assert row["sesoi"] == comparisons.MIOU_SESOI and row["origin"] == "paper"
    tested = default[default["p"].notna()]
    m, rank = len(tested), int((tested["p"] < row["p"]).sum())
    assert row["alpha_step"] == pytest.approx(0.05 / (m - rank))
    assert row["mdd"] == pytest.approx(comparisons.minimum_detectable_difference(diff.std(ddof=1), 5, 0.05 / (m - rank),
                                                                                 alternative="larger"))


def test_an_inconclusive_row_says_how_many_seeds_would_decide():
    from statsmodels.stats.power import TTestPower
    table = verdict.verdict_table(_runs(MIOU, PEARSON), probe=_probe(0.06), sweep=_sweep(2.0, 0.0))
    inconclusive = table[table["reading"] == "inconclusive"]
    assert "c" in set(inconclusive["claim"])  # +0.06 R² under 0.05 noise, SESOI 0.01: beyond any practical n
    for _, row in inconclusive.iterrows():
        size = row["sesoi"] / row["sd"]
        def power(n):
            return TTestPower().power(effect_size=size, nobs=n, alpha=row["alpha_step"], alternative="larger")
        if np.isinf(row["seeds_needed"]):
            assert power(comparisons.MAX_SEEDS) < 0.8
        else:
            assert power(row["seeds_needed"] - 1) < 0.8 <= power(row["seeds_needed"])
    assert table["seeds_needed"][table["reading"] != "inconclusive"].isna().all()
    assert table.set_index("claim").loc["d", "origin"].iloc[0] == "this study"


def test_a_tiny_positive_effect_is_not_supported_when_it_is_shown_below_the_sesoi():
    assert verdict.reading(p_holm=0.001, p_tost_holm=0.001) == "not supported"
    assert verdict.reading(p_holm=0.001, p_tost_holm=0.2) == "supported"
    assert verdict.reading(p_holm=0.3, p_tost_holm=0.2) == "inconclusive"


def test_sweep_claim_not_supported_when_pid_helps_everywhere_alike():
    table = verdict.verdict_table(_runs(MIOU, PEARSON), sweep=_sweep(1.0, 1.0))
    row = table[(table["setting"] == "default")].set_index("claim").loc["d"]
    assert abs(row["effect"]) < 0.1 and row["reading"] == "not supported"
    assert table.set_index(["setting", "claim"]).loc[("default", "c"), "reading"] == "missing"


def test_strongest_competitor_is_chosen_on_tune_not_val():
    runs = _runs(MIOU, PEARSON, tune_shift={**MIOU, "skd": 5.0})       # skd best on tune, cwd best on val
    assert verdict.strongest_competitor(runs) == "skd"
    assert verdict.strongest_competitor(runs.drop(columns="tune_miou")) == "cwd"


def test_tuned_rows_use_the_confirmation_and_the_default_baseline():
    runs = _runs(MIOU, PEARSON)
    tuned = _runs({"kd": 2.0, "idd": 2.1, "idd+pid": 5.0, "cwd": 3.0}, {"kd": 0.0, "idd": 0.03})
    table = verdict.verdict_table(runs, tuned=tuned).set_index(["setting", "claim"])
    assert table.loc[("tuned", "a"), "reading"] in ("inconclusive", "not supported")
    assert table.loc[("tuned", "b vs baseline"), "reading"] == "supported"    # paired with the default baseline runs
    assert table.loc[("tuned", "c"), "evidence"].startswith("missing")
    assert "−" in verdict.verdict_markdown(table.reset_index())


def test_the_printed_verdict_never_shows_a_p_of_zero_and_keeps_trailing_zeros():
    table = verdict.verdict_table(_runs(MIOU, PEARSON), probe=_probe(0.06), sweep=_sweep(2.0, 0.0), tuned=None)
    table.loc[table["claim"] == "a", ["p_holm", "ci_high"]] = [2e-5, 3.0]
    printed = verdict.verdict_markdown(table)
    row_a = next(line for line in printed.splitlines() if line.startswith("| a ") and "default" in line)
    assert "<0.001" in row_a and ", 3.00]" in row_a
    assert "| 0.000 " not in printed
