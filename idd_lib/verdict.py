"""The verdict: one row per claim (the paper's or this study's), in default and tuned settings, with a reading.

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

Each claim says where it comes from (:class:`Claim`): **paper** for the abstract's own claims (IDD
transfers inter-class distance and improves accuracy; PID makes the student encode more position
information; the method beats the state of the art), **this study** for hypotheses the study adds
(claim (d)). Each declares its smallest effect of interest (SESOI, :data:`CLAIMS`), fixed before the
data in docs/analysis.md.

Reading, the same rule for every row (:data:`RULE`): two one-sided paired t-tests per row, each
Holm-corrected across the rows of one setting. The **directional** test (H0: effect <= 0, scipy's
``ttest_rel(..., alternative="greater")``); the **TOST upper** test (H0: effect >= SESOI, the upper
half of statsmodels' ``ttost_paired`` with bounds ±SESOI): rejecting it shows the effect is smaller
than the SESOI (equivalence or inferiority). **not supported** when the TOST upper test rejects (an
effect below the SESOI is shown, even where it is also shown above 0: it is too small to matter);
**supported** when the directional test rejects; **inconclusive** otherwise, with the seeds a test at
the row's Holm step would need to find the SESOI with power 0.8. A row without evidence says what
is missing.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import stats

from .comparisons import (ALPHA, MAX_SEEDS, MIOU_SESOI, holm, holm_step_alphas, minimum_detectable_difference,
                          paired_difference, seeds_needed)
from .names import IDD_FAMILY, p_text


@dataclasses.dataclass(frozen=True)
class Claim:
    """One row of the verdict: its key, what it says, who claims it, and its smallest effect of interest."""
    key: str
    statement: str
    origin: str   # "paper" (the abstract's claim) or "this study" (a hypothesis the study adds)
    sesoi: float  # in the unit of its evidence
    unit: str


CLAIMS = {c.key: c for c in (
    Claim("a", "IDD improves accuracy over KD alone", "paper", MIOU_SESOI, "val mIoU points"),
    Claim("b vs kd", "IDD transfers the teacher's inter-class distances (vs KD)", "paper", 0.02,
          "Pearson r of the distance matrices"),
    Claim("b vs baseline", "IDD transfers the teacher's inter-class distances (vs no distillation)", "paper", 0.02,
          "Pearson r of the distance matrices"),
    Claim("c", "PID makes the student encode more position information", "paper", 0.01, "probe mean R²"),
    Claim("d", "PID helps where position predicts the class, not where it does not", "this study", MIOU_SESOI,
          "val mIoU points (gain difference)"),
    Claim("e", "IDD+PID beats the strongest competing method", "paper", MIOU_SESOI, "val mIoU points"),
)}
RULE = ("per row, two one-sided paired t-tests, each Holm-corrected across the claims of one setting: the "
        "directional test (effect > 0) and the TOST upper test (effect < SESOI, the claim's smallest effect of "
        "interest); **not supported**: the TOST upper test rejects (an effect below the SESOI is shown); "
        "**supported**: otherwise, the directional test rejects; **inconclusive**: neither (the row says how many "
        "seeds would decide); **missing**: no evidence for that setting yet.")
SWEEP_PAIR = ("idd+pid", "idd")  # the prior sweep's networks with and without PID (config.SweepConfig.methods)
NOT_COMPETITORS = ("baseline", *IDD_FAMILY)
COLUMNS = ["claim", "origin", "setting", "evidence", "n", "effect", "ci_low", "ci_high", "sd", "sesoi", "p",
           "p_holm", "p_tost", "p_tost_holm", "alpha_step", "mdd", "seeds_needed", "reading"]


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


def reading(p_holm: float, p_tost_holm: float) -> str:
    """The rule of :data:`RULE` on a row's two Holm-corrected one-sided p-values."""
    if not math.isnan(p_tost_holm) and p_tost_holm < ALPHA:
        return "not supported"
    if not math.isnan(p_holm) and p_holm < ALPHA:
        return "supported"
    return "inconclusive"


def one_sided_tests(a: pd.Series, b: pd.Series, sesoi: float) -> tuple[float, float]:
    """p of the directional test (H0: mean(a - b) <= 0) and of TOST's upper test (H0: mean(a - b) >=
    sesoi), paired by seed; NaN below 2 shared seeds or without a spread."""
    from statsmodels.stats.weightstats import ttost_paired

    a, b = a.align(b, join="inner")
    keep = a.notna() & b.notna()
    a, b = a[keep].to_numpy(dtype=float), b[keep].to_numpy(dtype=float)
    if len(a) < 2 or not np.std(a - b) > 0:
        return float("nan"), float("nan")
    upper = ttost_paired(a, b, -sesoi, sesoi)[2][1]
    return float(stats.ttest_rel(a, b, alternative="greater").pvalue), float(upper)


def _tested_row(claim: Claim, setting: str, text: str, a: pd.Series, b: pd.Series) -> dict:
    stat = paired_difference(a, b)
    if stat["n"] == 0:
        return {"claim": claim.key, "origin": claim.origin, "setting": setting,
                "evidence": f"missing: no paired runs for {text}", "reading": "missing"}
    p, p_tost = one_sided_tests(a, b, claim.sesoi)
    return {"claim": claim.key, "origin": claim.origin, "setting": setting, "evidence": text, **stat, "p": p,
            "p_tost": p_tost, "sesoi": claim.sesoi}


def _rows(evidence: list, setting: str) -> list[dict]:
    rows = [{"claim": item[0], "origin": CLAIMS[item[0]].origin, "setting": setting, "evidence": item[1],
             "reading": "missing"} if len(item) == 2 else _tested_row(CLAIMS[item[0]], setting, *item[1:])
            for item in evidence]
    tested = [row for row in rows if "reading" not in row]
    p, p_tost = ([row[key] for row in tested] for key in ("p", "p_tost"))
    for row, held, held_tost, alpha in zip(tested, holm(p), holm(p_tost), holm_step_alphas(p)):
        row.update(p_holm=float(held), p_tost_holm=float(held_tost), alpha_step=float(alpha),
                   mdd=minimum_detectable_difference(row["sd"], row["n"], alpha, alternative="larger"),
                   reading=reading(held, held_tost))
        if row["reading"] == "inconclusive":
            row["seeds_needed"] = seeds_needed(row["sd"], row["sesoi"], alpha, alternative="larger")
    return pd.DataFrame(rows, columns=COLUMNS).to_dict("records")


def verdict_table(runs: pd.DataFrame | None, probe: pd.DataFrame | None = None, sweep: pd.DataFrame | None = None,
                  tuned: pd.DataFrame | None = None) -> pd.DataFrame:
    """The verdict rows under default settings (``runs``: method, seed, miou, tune_miou, pearson of
    the default-setting runs) and tuned settings (``tuned``: the same columns for each method's
    selected setting and the baseline on the fresh confirmation seeds, :func:`idd_lib.tuning.tuned_rows`);
    ``probe``/``sweep``: the per-seed tables of 07."""
    rows = _rows(_evidence(runs, probe, sweep, None, tuned=False), "default")
    own_baseline = tuned is not None and (tuned["method"] == "baseline").any()   # the fresh seeds' baseline
    rows += _rows(_evidence(tuned, None, None, tuned if own_baseline else runs, tuned=True), "tuned")
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_markdown(table: pd.DataFrame) -> str:
    """The verdict as a Markdown table: effects, CIs and MDD to 3 significant places (trailing zeros kept),
    p-values to 3 decimals ('<0.001' below), the Holm step's alpha to 4."""
    def fmt(value, spec):
        return "" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)
    needed = ["" if pd.isna(v) else (f"> {MAX_SEEDS}" if math.isinf(v) else f"{v:.0f}") for v in table["seeds_needed"]]
    shown = pd.DataFrame({
        "claim": table["claim"], "origin": table["origin"], "setting": table["setting"],
        "evidence": table["evidence"], "n": [fmt(v, ".0f") for v in table["n"]],
        "effect": [fmt(v, "+#.3g") for v in table["effect"]],
        "95% CI": ["" if pd.isna(lo) else f"[{lo:#.3g}, {hi:#.3g}]" for lo, hi in zip(table["ci_low"], table["ci_high"])],
        "SESOI": [fmt(v, ".3g") for v in table["sesoi"]], "p (Holm)": [p_text(v) for v in table["p_holm"]],
        "TOST p (Holm)": [p_text(v) for v in table["p_tost_holm"]],
        "Holm step α": [fmt(v, ".4f") for v in table["alpha_step"]], "MDD at that α": [fmt(v, "#.3g") for v in table["mdd"]],
        "seeds needed": needed, "reading": table["reading"]})
    return shown.to_markdown(index=False, disable_numparse=True)  # keep the formatting above


def sesoi_markdown() -> str:
    """The declared smallest effects of interest, one row per claim (docs/analysis.md has their reasons)."""
    return pd.DataFrame([{"claim": c.key, "statement": c.statement, "origin": c.origin, "SESOI": f"{c.sesoi:g}",
                          "unit": c.unit} for c in CLAIMS.values()]).to_markdown(index=False, disable_numparse=True)
