"""Check a study's fresh results against the reference results the project carries (``make verify``).

``reference/<profile>/`` holds the reference study: ``runs.csv`` (one row per student run: method,
seed, config digest, validation and tune mIoU, per-class IoU, and the distance-matrix agreement with
the teacher), ``tables/`` (the position probe's table, and the per-seed probe and sweep tables the
verdict reads), ``tuning/`` (the committed tuning) and ``machine.json`` (CPU model, threads, torch
build, commit, wall times, teacher). ``python -m idd_lib.verify --write-reference`` writes it from
``results/<profile>/``; ``python -m idd_lib.verify`` compares ``results/<profile>/`` with it by
numbers within tolerances and by conclusions:

* **exact**: every per-seed number equals the reference's to the last digit (expected on the same
  CPU type, thread count and torch build: the runs are deterministic there);
* **agree**: an equivalence test within a tolerance derived from the seed spread: the 90% Welch
  interval of the difference of means lies inside ``± TOLERANCE x s`` (``s``: the two sides'
  pooled seed standard deviation), i.e. both one-sided Welch tests of TOST reject a difference as
  large as the tolerance at 5%;
* **differs** otherwise (the interval reaches beyond the tolerance), or **missing** (a method or seed
  of the reference that did not run), or **undetermined** (one value on a side: no spread to judge by).

The same test decides each claim of the verdict (:mod:`idd_lib.verdict`), on its seed-paired effect
with the paired differences' spread, and the claim's reading is compared: the same reading holds; a
neighbouring reading (supported or not supported against inconclusive) with an agreeing effect is
**borderline** (a test near its threshold flips on noise: it is shown, and does not fail); opposite
readings (supported against not supported), an effect that differs, or a changed sign where the
reference's interval excludes 0 **fail**. The exit status is 1 when a number differs, is missing,
or a conclusion fails, and 2 on an error. benchmarks/verify_false_alarm.py measures how often the
rule fails faithful reproductions and passes one that lost a result.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .config import Profile
from .names import p_text
from .paths import profile_dir, reference_dir
from .presets import get_profile
from .report import current_results, results_frame, summarize
from .study import ablation_grid
from .teachers import file_sha256
from .tuning import TUNING, tuning_record
from .rundir import (MODEL, RESULT, RunFileError, atomic_write_text, now, read_json, read_provenance, read_result,
                     staged_folder)

ALPHA = 0.05
TOLERANCE = 3.0  # seed standard deviations: the margin of the equivalence test (docs/reproducibility.md)
RUNS, MACHINE = "runs.csv", "machine.json"
PROBE = "position_probe"  # the analysis table compared from its means and stds
SEED_TABLES = ("position_probe_seeds", "position_sweep_seeds")  # the per-seed tables the verdict reads
KEYS = ("method", "seed", "config_digest", "miou")
PASSING = ("exact", "agree")
RULE = (f"Rule: exact = every per-seed number equals the reference's to the last digit (same CPU type, thread\n"
        f"count and torch build); agree = the 90% Welch interval of the difference of means lies inside\n"
        f"± {TOLERANCE:g} x the pooled seed sd (TOST at 5%); undetermined = one value on a side (does not fail).\n"
        "Claims: the verdict's effects by the same test on the paired differences, and their readings: the same\n"
        "reading holds; a neighbouring one with an agreeing effect is borderline (does not fail); opposite readings,\n"
        "a differing effect, or a changed sign where the reference's 95% CI excludes 0 fail.")


class VerifyError(ValueError):
    """Results or a reference that cannot be compared; the message names the file and what was expected."""


# --- the per-seed table of a results folder ---------------------------------------------------

def _current(profile: Profile) -> list[dict[str, Any]]:
    folder = profile_dir(profile.name)
    if not (folder / "runs").is_dir():
        raise VerifyError(f"{folder}: no study results here; expected the runs of 'make study PROFILE={profile.name}' "
                          "(IDD_RESULTS selects another results folder)")
    results = current_results(profile, ablation_grid(profile))   # the study's own runs, not the tuning's
    if not results:
        raise VerifyError(f"{folder / 'runs'}: no finished run of the current configuration; "
                          f"run 'make study PROFILE={profile.name}' first")
    return results


def runs_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: method label, seed, config digest, mIoU, ``iou/<class>`` and ``agreement/<key>``."""
    rows = []
    for run in results_frame(results).to_dict("records"):
        row = {"method": run["label"], "seed": int(run["seed"]), "config_digest": run["config_digest"],
               "miou": run["miou"], "tune_miou": run.get("tune_miou", math.nan)}
        row.update({f"iou/{name}": value for name, value in zip(run["class_names"], run["per_class_iou"])})
        row.update({k: v for k, v in run.items() if k.startswith("agreement/")})
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["method", "seed"], kind="stable").reset_index(drop=True)


def _unique(values: list[Any]) -> Any:
    kept = [v for i, v in enumerate(values) if v is not None and v not in values[:i]]
    return kept[0] if len(kept) == 1 else (kept or None)


def machine_record(profile: Profile, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Where and how the runs were computed, from their provenance, and the study's wall times."""
    from .runs import teacher_dir

    provenance = [read_provenance(r["run_dir"]) for r in results]
    teacher = teacher_dir(profile)
    teacher_result = read_result(teacher) if (teacher / RESULT).exists() else {}
    notebooks = _notebook_times(profile_dir(profile.name) / "notebooks")
    return {
        "profile": profile.name, "written": now(),
        "machine": _unique([p.get("machine") for p in provenance]),
        "commit": _unique([p.get("git", {}).get("commit") for p in provenance]),
        "dirty": any(p.get("git", {}).get("dirty", False) for p in provenance),
        "versions": _unique([p.get("versions") for p in provenance]),
        "teacher": {"config_digest": teacher_result.get("config_digest"), "miou": teacher_result.get("miou"),
                    "wall_time_s": teacher_result.get("wall_time_s"),
                    "source": "shipped" if "source" in read_provenance(teacher) else "trained",
                    "model_sha256": file_sha256(teacher / MODEL) if (teacher / MODEL).is_file() else None},
        "runs": len(results), "runs_wall_time_s": sum(r.get("wall_time_s", 0.0) for r in results),
        "study_wall_time_s": sum(notebooks.values()) if notebooks else None, "notebooks_s": notebooks,
    }


def _notebook_times(folder: Path) -> dict[str, float]:
    """Each executed study notebook's papermill duration (seconds)."""
    times = {}
    for path in sorted(folder.glob("*.ipynb")):
        if path.stem.endswith((".running", ".failed")):
            continue
        try:
            duration = json.loads(path.read_text())["metadata"]["papermill"]["duration"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(duration, (int, float)):
            times[path.stem] = round(float(duration), 1)
    return times


def write_reference(profile: Profile | str, root: Path | None = None) -> Path:
    """Write ``reference/<profile>/`` from ``results/<profile>/``: runs.csv, the probe table, machine.json,
    and the tuning results (``make tune``) when the results folder has them, else the reference's own."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    results = _current(profile)
    tables = [profile_dir(profile.name) / "tables" / f"{name}.csv" for name in (PROBE, *SEED_TABLES)]
    tuning = [folder for folder in (profile_dir(profile.name) / TUNING, reference_dir(profile.name, root) / TUNING)
              if (folder / "tuning.json").is_file() and "source" not in tuning_record(folder)]  # not an adopted copy
    with staged_folder(reference_dir(profile.name, root)) as staging:
        runs_table(results).to_csv(staging / RUNS, index=False)
        for table in (t for t in tables if t.is_file()):
            (staging / "tables").mkdir(exist_ok=True)
            shutil.copyfile(table, staging / "tables" / table.name)
        if tuning:
            shutil.copytree(tuning[0], staging / TUNING)
        atomic_write_text(staging / MACHINE, json.dumps(machine_record(profile, results), indent=2) + "\n")
    return reference_dir(profile.name, root)


# --- reading a reference ---------------------------------------------------------------------

def _read_csv(path: Path, required: tuple[str, ...], numeric: tuple[str, ...]) -> pd.DataFrame:
    remedy = "restore it from git or write it again (python -m idd_lib.verify --write-reference)"
    try:
        # pandas' parser reads back the exact number written (tests/test_verify.py checks): "exact" is to the last digit
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise VerifyError(f"{path}: missing; expected the reference's table; {remedy}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        reason = next(iter(str(err).strip().splitlines()), type(err).__name__)
        raise VerifyError(f"{path}: damaged CSV ({reason}); {remedy}") from None
    missing = [c for c in required if c not in table]
    if missing:
        raise VerifyError(f"{path}: no column {', '.join(missing)}; expected {', '.join(required)}; {remedy}")
    for column in numeric:
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise VerifyError(f"{path}: column {column} holds something else than numbers; {remedy}")
    return table


def load_reference(folder: Path) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame | None]:
    """The reference's runs, machine record and probe table (None when it has none)."""
    if not folder.is_dir():
        raise VerifyError(f"{folder}: no reference results; expected {RUNS} and {MACHINE} "
                          "(python -m idd_lib.verify --write-reference writes them from a results folder)")
    runs = _read_csv(folder / RUNS, KEYS, ("seed", "miou"))
    try:
        machine = read_json(folder / MACHINE, "restore it from git or write the reference again")
    except FileNotFoundError:
        raise VerifyError(f"{folder / MACHINE}: missing; expected the reference's machine record") from None
    except RunFileError as err:
        raise VerifyError(str(err)) from None
    probe = folder / "tables" / f"{PROBE}.csv"
    return runs, machine, _read_csv(probe, ("network", "seeds", "mean"), ("mean",)) if probe.exists() else None


# --- comparing --------------------------------------------------------------------------------

def welch(reference: tuple[float, float, int], yours: tuple[float, float, int],
          tolerance: float = TOLERANCE) -> tuple[float, float, float]:
    """Difference of means (yours - reference), the half-width of its 90% Welch interval and the margin
    ``tolerance x`` pooled sd, from (mean, std, n) of each side; NaN half-width below 2 values on a side."""
    (m_r, s_r, n_r), (m_u, s_u, n_u) = reference, yours
    delta = m_u - m_r
    if n_r < 2 or n_u < 2:
        return delta, math.nan, math.nan
    v_r, v_u = s_r**2 / n_r, s_u**2 / n_u
    margin = tolerance * math.sqrt((s_r**2 + s_u**2) / 2)
    if v_r + v_u == 0:
        return delta, 0.0, margin
    df = (v_r + v_u) ** 2 / (v_r**2 / (n_r - 1) + v_u**2 / (n_u - 1))
    return delta, float(stats.t.ppf(1 - ALPHA, df) * math.sqrt(v_r + v_u)), margin


def _spread(values: pd.Series) -> tuple[float, float, int]:
    values = values.dropna().astype(float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values)


def _show(mean: float, std: float, n: int, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Every number equal, NaN where the other has NaN."""
    return a.shape == b.shape and bool(((a == b) | (a.isna() & b.isna())).all().all())


def _judged(ref: tuple[float, float, int], yours: tuple[float, float, int], exact: bool) -> dict[str, Any]:
    """The difference, its 90% interval's half-width, the margin and the verdict of one comparison."""
    delta, half, margin = welch(ref, yours)
    if exact:
        verdict = "exact"
    elif math.isnan(half):
        verdict = "undetermined"
    else:
        verdict = "agree" if abs(delta) + half < margin else "differs"
    return {"difference": delta, "90% CI half-width": half, "margin": margin, "verdict": verdict}


COMPARED = ["method", "seeds", "reference", "yours", "difference", "90% CI half-width", "margin", "verdict"]


def _problem(ref: pd.DataFrame, yours: pd.DataFrame) -> str | None:
    """Why a method's runs cannot be compared: missing seeds, or runs of another configuration."""
    if yours.empty:
        return "missing: no run of this method in your results"
    lost = sorted(set(ref["seed"]) - set(yours["seed"]))
    if lost:
        return f"missing seeds {', '.join(map(str, lost))}"
    theirs = ref.set_index("seed")["config_digest"]
    digests = yours.set_index("seed")["config_digest"].reindex(theirs.index)
    other = theirs != digests
    if other.any():
        seed = other[other].index[0]
        return f"another config (seed {seed}: {digests[seed]}, reference {theirs[seed]})"
    return None


def compare_runs(ref: pd.DataFrame, yours: pd.DataFrame, column: str, exact_columns: list[str],
                 digits: int = 2) -> pd.DataFrame:
    """Per reference method: seeds, both mean ± std of ``column``, and the equivalence test's figures and
    verdict; exact when every ``exact_columns`` number of every reference seed matches."""
    rows = []
    for method, theirs in ref.groupby("method", sort=False):
        mine = yours[yours["method"] == method]
        problem = _problem(theirs, mine)
        r = _spread(theirs[column])
        row = {"method": method, "reference": _show(*r, digits)}
        if problem is not None:
            rows.append({**row, "yours": "", "verdict": problem})
            continue
        u = _spread(mine[column])
        cols = [c for c in exact_columns if c in theirs and c in mine]
        exact = _same(theirs.set_index("seed")[cols].sort_index(), mine.set_index("seed")[cols].sort_index())
        rows.append({**row, "seeds": f"{r[2]}/{u[2]}", "yours": _show(*u, digits), **_judged(r, u, exact)})
    return pd.DataFrame(rows, columns=COMPARED)


def compare_probe(ref: pd.DataFrame, yours: pd.DataFrame | None) -> pd.DataFrame:
    """The position probe's mean R² per network, from the two tables' means, stds and seed counts."""
    rows = []
    for record in ref.to_dict("records"):
        name = record["network"]
        mine = yours[yours["network"] == name] if yours is not None else pd.DataFrame()
        row = {"method": name, "reference": _show(record["mean"], record.get("mean std", math.nan), record["seeds"], 3)}
        if mine.empty:
            rows.append({**row, "yours": "", "verdict": "missing: not in your tables/position_probe.csv"})
            continue
        other = mine.iloc[0]
        r = (record["mean"], record.get("mean std", math.nan), int(record["seeds"]))
        u = (other["mean"], other.get("mean std", math.nan), int(other["seeds"]))
        exact = r[0] == u[0] and (r[1] == u[1] or math.isnan(r[1]) and math.isnan(u[1])) and r[2] == u[2]
        rows.append({**row, "seeds": f"{r[2]}/{u[2]}", "yours": _show(*u, 3), **_judged(r, u, exact)})
    return pd.DataFrame(rows, columns=COMPARED)


# --- conclusions: the verdict's claims on both sides -------------------------------------------

NEIGHBOURS = {frozenset(("supported", "inconclusive")), frozenset(("not supported", "inconclusive"))}


def verdict_runs(runs: pd.DataFrame, confirmation: pd.DataFrame | None) -> pd.DataFrame:
    """A runs table (``runs.csv``'s columns) in the verdict's form, with the confirmation's default-setting
    runs of the methods it lacks and, where it has no tune mIoU, the confirmation's (the same runs)."""
    from .report import with_tuning_defaults

    frame = runs.assign(label=runs["method"], pearson=runs.get("agreement/pearson", math.nan))
    if "tune_miou" not in frame:
        frame["tune_miou"] = math.nan
    if confirmation is not None:
        tune = confirmation[confirmation["setting"] == "default"].groupby(["method", "seed"])["tune_miou"].first()
        keys = pd.MultiIndex.from_frame(frame[["method", "seed"]])
        frame["tune_miou"] = frame["tune_miou"].fillna(pd.Series(tune.reindex(keys).to_numpy(), index=frame.index))
    return with_tuning_defaults(frame[["method", "label", "seed", "miou", "tune_miou", "pearson"]], confirmation)


def study_verdict(folder: Path, runs: pd.DataFrame, confirmation: pd.DataFrame | None) -> pd.DataFrame:
    """The verdict of a results or reference folder (its runs table, its confirmation, its per-seed tables)."""
    probe, sweep = ((folder / "tables" / f"{name}.csv") for name in SEED_TABLES)
    return verdict_of(runs, confirmation, pd.read_csv(probe) if probe.is_file() else None,
                      pd.read_csv(sweep) if sweep.is_file() else None)


def verdict_of(runs: pd.DataFrame, confirmation: pd.DataFrame | None, probe: pd.DataFrame | None = None,
               sweep: pd.DataFrame | None = None) -> pd.DataFrame:
    """The verdict of a runs table (``runs.csv``'s columns), a confirmation and the per-seed tables."""
    from .verdict import verdict_table

    from .tuning import tuned_rows

    tuned = tuned_rows(confirmation) if confirmation is not None else None
    return verdict_table(verdict_runs(runs, confirmation), probe, sweep, tuned)


def _claim_check(ref: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
    """One claim's comparison: its effect by the equivalence test (paired sds), then its reading."""
    r, u = (float(ref["effect"]), float(ref["sd"]), int(ref["n"])), (float(mine["effect"]), float(mine["sd"]), int(mine["n"]))
    judged = _judged(r, u, exact=r == u)
    readings = frozenset((ref["reading"], mine["reading"]))
    sign_lost = ref["ci_low"] > 0 > mine["effect"] or ref["ci_high"] < 0 < mine["effect"]
    if judged["verdict"] == "differs" or sign_lost or readings == {"supported", "not supported"}:
        check = "FAILS"
    elif judged["verdict"] == "undetermined":
        check = "undetermined"
    else:
        check = "holds" if len(readings) == 1 else "borderline" if readings in NEIGHBOURS else "FAILS"
    return {**judged, "check": check}


def compare_conclusions(ref: pd.DataFrame, yours: pd.DataFrame) -> pd.DataFrame:
    """Per claim and setting the reference decides (not missing there): both effects and readings, the
    effect's equivalence test and the check (holds, borderline, FAILS, or missing in yours)."""
    rows = []
    mine = yours.set_index(["claim", "setting"])
    for row in ref[ref["reading"] != "missing"].to_dict("records"):
        key = (row["claim"], row["setting"])
        out = {"claim": row["claim"], "setting": row["setting"], "evidence": row["evidence"],
               "reference": f"{row['effect']:+#.3g} {row['reading']}"}
        other = mine.loc[key] if key in mine.index else None
        if other is None or other["reading"] == "missing":
            rows.append({**out, "yours": "missing", "check": "FAILS"})
            continue
        rows.append({**out, "yours": f"{other['effect']:+#.3g} {other['reading']}", **_claim_check(row, other)})
    return pd.DataFrame(rows, columns=["claim", "setting", "evidence", "reference", "yours", "difference",
                                       "90% CI half-width", "margin", "check"])


def signs(ref: pd.DataFrame, yours: pd.DataFrame, baseline: str = "baseline") -> pd.DataFrame:
    """Per method: the paired difference to the baseline and its p-value in the reference and in
    yours, whether the sign holds, and whether a change fails (the reference was significant)."""
    columns = ["method", "reference", "yours", "sign", "fails"]
    if baseline not in set(ref["method"]) or baseline not in set(yours["method"]):
        return pd.DataFrame(columns=columns)
    theirs, mine = (summarize(t.assign(label=t["method"]), baseline).set_index("method") for t in (ref, yours))
    rows = []
    for method in theirs.index.drop(baseline):
        if method not in mine.index:
            continue
        (d_r, p_r), (d_u, p_u) = ((t.loc[method, "delta_vs_baseline"], t.loc[method, "p_vs_baseline"])
                                  for t in (theirs, mine))
        holds = np.sign(d_r) == np.sign(d_u)
        rows.append({"method": method, "reference": _delta(d_r, p_r), "yours": _delta(d_u, p_u),
                     "sign": "holds" if holds else "changes", "fails": bool(not holds and p_r < ALPHA)})
    return pd.DataFrame(rows, columns=columns)


def _delta(delta: float, p: float) -> str:
    return f"{delta:+.2f} (p {p_text(p)})" if not math.isnan(p) else f"{delta:+.2f}"


@dataclasses.dataclass
class Assessment:
    """What :func:`assess` found: the number tables, the claims, the signs, and what fails."""
    tables: dict[str, pd.DataFrame]
    claims: pd.DataFrame
    signs: pd.DataFrame
    failing: list[str]


def assess(ref_runs: pd.DataFrame, mine: pd.DataFrame, ref_verdict: pd.DataFrame, my_verdict: pd.DataFrame,
           probes: tuple[pd.DataFrame, pd.DataFrame | None] | None = None) -> Assessment:
    """Every comparison of one reproduction with the reference, from tables only (no files: the
    false-alarm simulation calls it too)."""
    exact_columns = [c for c in ref_runs if c not in ("method", "seed", "config_digest", "tune_miou")]
    tables = {"Validation mIoU (%)": compare_runs(ref_runs, mine, "miou", exact_columns)}
    if "agreement/pearson" in ref_runs:
        tables["Distance-matrix Pearson r with the teacher"] = compare_runs(
            ref_runs, mine, "agreement/pearson", [c for c in exact_columns if c.startswith("agreement/")], 3)
    if probes is not None:
        tables["Position probe mean R²"] = compare_probe(*probes)
    claims, sign_table = compare_conclusions(ref_verdict, my_verdict), signs(ref_runs, mine)
    failing = [f"{row['method']} ({title})" for title, t in tables.items() for row in t.to_dict("records")
               if row["verdict"] not in (*PASSING, "undetermined")]
    failing += [f"claim {c} ({s})" for c, s in claims.loc[claims["check"] == "FAILS", ["claim", "setting"]].to_numpy()]
    failing += [f"{m} vs baseline (sign)" for m in sign_table.loc[sign_table["fails"].astype(bool), "method"]]
    return Assessment(tables, claims, sign_table, failing)


# --- the report ------------------------------------------------------------------------------

def _machine_line(name: str, record: dict[str, Any]) -> str:
    machine = record.get("machine") or {}
    if isinstance(machine, list):
        return f"{name}: several machines ({len(machine)}), commit {record.get('commit')}"
    return (f"{name}: {machine.get('cpu', 'unknown CPU')}, {machine.get('threads', '?')} threads, torch "
            f"{machine.get('torch', '?')}, commit {str(record.get('commit'))[:10]}"
            + (f", study {record['study_wall_time_s']:.0f} s" if record.get("study_wall_time_s") else ""))


def _teacher_line(reference: dict[str, Any], yours: dict[str, Any]) -> str:
    """Both teachers, and whether their weights are the same file (the shipped teacher on both sides)."""
    def show(record: dict[str, Any]) -> str:
        teacher = record.get("teacher") or {}
        miou = teacher.get("miou")
        return (f"{teacher.get('config_digest')} val mIoU {miou:.2f} ({teacher.get('source')})" if miou is not None
                else "none found")
    hashes = [(record.get("teacher") or {}).get("model_sha256") for record in (reference, yours)]
    same = ("; the same weights" if hashes[0] == hashes[1] else "; OTHER weights: your students learn from another "
            "teacher") if all(hashes) else ""
    return f"teacher: reference {show(reference)}; yours {show(yours)}{same}"


def _same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("cpu", "threads", "torch")
    return all(isinstance(m, dict) for m in (a.get("machine"), b.get("machine"))) and all(
        a["machine"].get(k) == b["machine"].get(k) for k in keys)


def _table(frame: pd.DataFrame) -> str:
    """Numbers to 3 decimals (NaN: blank); text as written (tabulate would reformat "26.05" as a number)."""
    def cell(value: Any) -> Any:
        return ("" if math.isnan(value) else f"{value:.3f}") if isinstance(value, float) else value
    return frame.map(cell).to_markdown(index=False, disable_numparse=True) if len(frame) else "(nothing to compare)"


def committed_confirmation(folder: Path) -> pd.DataFrame | None:
    """A results or reference folder's tuning confirmation (None without one)."""
    from .tuning import read_confirmation

    return read_confirmation(folder / TUNING)


def verify(profile: Profile | str, root: Path | None = None) -> tuple[str, bool]:
    """The comparison of ``results/<profile>/`` with ``reference/<profile>/`` as text, and whether it passes."""
    from .tuning import adopt_committed_tuning

    profile = get_profile(profile) if isinstance(profile, str) else profile
    results = _current(profile)
    ref_folder, my_folder = reference_dir(profile.name, root), profile_dir(profile.name)
    ref_runs, ref_machine, ref_probe = load_reference(ref_folder)
    mine, my_machine = runs_table(results), machine_record(profile, results)
    adopt_committed_tuning(profile)
    my_probe_path = my_folder / "tables" / f"{PROBE}.csv"
    my_probe = _read_csv(my_probe_path, ("network", "seeds", "mean"), ("mean",)) if my_probe_path.exists() else None
    found = assess(ref_runs, mine, study_verdict(ref_folder, ref_runs, committed_confirmation(ref_folder)),
                   study_verdict(my_folder, mine, committed_confirmation(my_folder)),
                   None if ref_probe is None else (ref_probe, my_probe))
    lines = [f"Reproduction check of profile {profile.name!r}: {my_folder} against {ref_folder}",
             _machine_line("reference", ref_machine), _machine_line("yours    ", my_machine),
             _teacher_line(ref_machine, my_machine),
             "Same CPU type, thread count and torch build: expect 'exact'." if _same_machine(ref_machine, my_machine)
             else "Another CPU type, thread count or torch build: expect 'agree' (within the tolerance), not 'exact'.",
             RULE, ""]
    for title, frame in found.tables.items():
        lines += [f"## {title}", "", _table(frame), ""]
    lines += ["## Conclusions: the verdict's claims", "", _table(found.claims), "",
              "Paired difference to the baseline (mean over shared seeds, paired t-test):", "",
              _table(found.signs.assign(fails=found.signs["fails"].map({True: "FAILS", False: ""}))), ""]
    lines.append("Reproduced." if not found.failing else f"NOT reproduced: {'; '.join(found.failing)}.")
    return "\n".join(lines), not found.failing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m idd_lib.verify", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", help="the profile whose results to check")
    parser.add_argument("--write-reference", action="store_true",
                        help="write reference/<profile>/ from results/<profile>/ instead of checking")
    parser.add_argument("--reference-root", type=Path, default=None,
                        help="the folder holding <profile>/ reference folders (default: reference/ in the project)")
    args = parser.parse_args(argv)
    try:
        if args.write_reference:
            folder = write_reference(args.profile, args.reference_root)
            print(f"reference written: {folder} ({len(pd.read_csv(folder / RUNS))} runs)")
            return 0
        text, passed = verify(args.profile, args.reference_root)
    except (VerifyError, ValueError, RunFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
