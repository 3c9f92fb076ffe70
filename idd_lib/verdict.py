"""The verdict: one row per claim of the paper, under default and tuned settings, with a reading.

Claims and their evidence (seed-paired differences, :mod:`idd_lib.comparisons`):

* (a) IDD improves over KD alone: val mIoU, ``idd - kd``;
* (b) IDD restores the teacher's inter-class distance structure: Pearson r of the class-centre
  distance matrix with the teacher's (each run's ``agreement/pearson``), ``idd - kd`` and
  ``idd - baseline``;
* (c) PID raises position information: position-probe mean R², ``idd+pid - idd``
  (``tables/position_probe_seeds.csv``, written by 07_position);
* (d) PID helps when position predicts the class and not when it does not: in the prior sweep
  (``tables/position_sweep_seeds.csv``), PID's paired gain ``idd+pid - idd`` (PID added to KD + IDD) averaged over the
  informative priors (> 0) minus its gain at prior 0;
* (e) IDD+PID vs the strongest baseline (the competing method with the highest mean *tune* mIoU,
  val where no run has tune numbers, among every method with runs in that setting: under default
  settings the study's and the tuning's default-setting runs): val mIoU, ``idd+pid - strongest``.

Reading, the same rule for every row (:data:`RULE`): p-values are Holm-corrected across the rows of
one setting; **supported** when the effect points the claimed way with corrected p < 0.05; **not
supported** when the 95% interval's upper end is below the smallest difference the design detects
(power 0.8, alpha 0.05, the row's n and spread), i.e. any effect it could detect is excluded;
otherwise **inconclusive**. A row without evidence says what is missing.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .comparisons import ALPHA, holm, minimum_detectable_difference, paired_difference

RULE = ("p-values Holm-corrected across the claims of one setting; **supported**: effect in the claimed "
        "direction and corrected p < 0.05; **not supported**: the 95% CI's upper end lies below the smallest "
        "difference the design can detect (power 0.8, alpha 0.05, at the row's n and spread), so every effect it "
        "could detect is excluded; **inconclusive**: neither; **missing**: no evidence for that setting yet.")
SWEEP_PAIR = ("idd+pid", "idd")  # the prior sweep's networks with and without PID (config.SweepConfig.methods)
NOT_COMPETITORS = ("baseline", "idd-only", "idd", "pid", "idd+pid")
COLUMNS = ["claim", "setting", "evidence", "n", "effect", "ci_low", "ci_high", "p", "p_holm", "mdd", "reading"]


def _series(runs: pd.DataFrame, method: str, value: str) -> pd.Series:
    rows = runs[runs["method"] == method] if runs is not None and value in runs else pd.DataFrame()
    return rows.groupby("seed")[value].mean() if len(rows) else pd.Series(dtype=float)


def strongest_competitor(runs: pd.DataFrame) -> str | None:
    """The competing method (not the baseline or the IDD/PID family) with the best mean tune mIoU
    (selection never reads val), or the best val mIoU where no run has tune numbers."""
    rivals = runs[~runs["method"].isin(NOT_COMPETITORS)]
    if rivals.empty:
        return None
    score = "tune_miou" if "tune_miou" in rivals and rivals["tune_miou"].notna().any() else "miou"
    return str(rivals.groupby("method")[score].mean().idxmax())


def sweep_gain_difference(sweep: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per seed: PID's mIoU gain (``idd+pid - idd``) averaged over the priors > 0, and at prior 0."""
    with_pid, without = SWEEP_PAIR
    wide = sweep[sweep["network"].isin(SWEEP_PAIR)].pivot_table(index=["prior", "seed"], columns="network",
                                                                values="miou")
    if not set(SWEEP_PAIR) <= set(wide.columns):
        return pd.Series(dtype=float), pd.Series(dtype=float)
    gain = (wide[with_pid] - wide[without]).reset_index(name="gain")
    informative = gain[gain["prior"] > 0].groupby("seed")["gain"].mean()
    flat = gain[gain["prior"] == 0].set_index("seed")["gain"]
    return informative, flat


def _evidence(runs: pd.DataFrame | None, probe: pd.DataFrame | None, sweep: pd.DataFrame | None,
              baseline_runs: pd.DataFrame | None, tuned: bool) -> list[tuple[str, str, pd.Series, pd.Series] | tuple[str, str]]:
    """(claim, description, a, b) per row, or (claim, what is missing)."""
    setting = "tuned settings" if tuned else "default settings"
    if runs is None or runs.empty:
        return [(c, f"missing: no {setting} runs") for c in ("a", "b vs kd", "b vs baseline", "c", "d", "e")]
    rows: list = [("a", "val mIoU, idd − kd", _series(runs, "idd", "miou"), _series(runs, "kd", "miou")),
                  ("b vs kd", "distance-matrix Pearson r, idd − kd", _series(runs, "idd", "pearson"),
                   _series(runs, "kd", "pearson")),
                  ("b vs baseline", "distance-matrix Pearson r, idd − baseline", _series(runs, "idd", "pearson"),
                   _series(baseline_runs if baseline_runs is not None else runs, "baseline", "pearson"))]
    if tuned or probe is None:
        rows.append(("c", "missing: the position probe (07_position) " + ("runs on default settings only" if tuned
                                                                          else "has not written its per-seed table")))
    else:
        rows.append(("c", "probe mean R², idd+pid − idd", _series(probe.rename(columns={"network": "method"}),
                                                                  "idd+pid", "mean"),
                     _series(probe.rename(columns={"network": "method"}), "idd", "mean")))
    if tuned or sweep is None:
        rows.append(("d", "missing: the prior sweep " + ("runs on default settings only" if tuned
                                                         else "(07_position) has not written its per-seed table")))
    else:
        informative, flat = sweep_gain_difference(sweep)
        rows.append(("d", "sweep: PID's mIoU gain (idd+pid − idd) at priors > 0 − at prior 0", informative, flat))
    rival = strongest_competitor(runs)
    rows.append(("e", "missing: no competing method's runs") if rival is None else
                ("e", f"val mIoU, idd+pid − {rival} (strongest by tune mIoU)", _series(runs, "idd+pid", "miou"),
                 _series(runs, rival, "miou")))
    return rows


def reading(effect: float, ci_high: float, p_holm: float, mdd: float) -> str:
    if not math.isnan(p_holm) and p_holm < ALPHA and effect > 0:
        return "supported"
    if not math.isnan(ci_high) and not math.isnan(mdd) and ci_high < mdd:
        return "not supported"
    return "inconclusive"


def _rows(evidence: list, setting: str) -> list[dict]:
    rows = []
    for item in evidence:
        if len(item) == 2:
            rows.append({"claim": item[0], "setting": setting, "evidence": item[1], "reading": "missing"})
            continue
        claim, text, a, b = item
        stat = paired_difference(a, b)
        if stat["n"] == 0:
            rows.append({"claim": claim, "setting": setting, "evidence": f"missing: no paired runs for {text}",
                         "reading": "missing"})
            continue
        rows.append({"claim": claim, "setting": setting, "evidence": text, **stat,
                     "mdd": minimum_detectable_difference(stat["sd"], stat["n"])})
    tested = [row for row in rows if "reading" not in row]
    for row, adjusted in zip(tested, holm([row["p"] for row in tested])):
        row["p_holm"] = float(adjusted)
        row["reading"] = reading(row["effect"], row["ci_high"], row["p_holm"], row["mdd"])
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame[COLUMNS].to_dict("records")


def verdict_table(runs: pd.DataFrame | None, probe: pd.DataFrame | None = None, sweep: pd.DataFrame | None = None,
                  tuned: pd.DataFrame | None = None) -> pd.DataFrame:
    """The verdict rows under default settings (``runs``: method, seed, miou, tune_miou, pearson of
    the default-setting runs) and tuned settings (``tuned``: the same columns for each method's
    selected setting, tuning/confirmation.csv); ``probe``/``sweep``: the per-seed tables of 07."""
    rows = _rows(_evidence(runs, probe, sweep, None, tuned=False), "default")
    rows += _rows(_evidence(tuned, None, None, runs, tuned=True), "tuned")
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_markdown(table: pd.DataFrame) -> str:
    """The verdict as a Markdown table: effect and CI to 3 significant places, p-values to 3 decimals."""
    def fmt(value, spec):
        return "" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)
    shown = pd.DataFrame({
        "claim": table["claim"], "setting": table["setting"], "evidence": table["evidence"],
        "n": [fmt(v, ".0f") for v in table["n"]], "effect": [fmt(v, "+.3g") for v in table["effect"]],
        "95% CI": ["" if pd.isna(lo) else f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(table["ci_low"], table["ci_high"])],
        "p (Holm)": [fmt(v, ".3f") for v in table["p_holm"]], "min. detectable": [fmt(v, ".3g") for v in table["mdd"]],
        "reading": table["reading"]})
    return shown.to_markdown(index=False, disable_numparse=True)  # keep the formatting above
