"""An equal tuning budget for every method, selected on the held-out ``tune`` split.

Each loss term declares what may vary (its ``search_space``: the weight on a log grid around the
method's default weight, a temperature where it has one; :class:`~idd_lib.losses.SearchSpace`).
Every method gets the same budget: ``trials`` settings, **the default setting included** as the
first, the others drawn without replacement from the product of its terms' spaces by a sampler
seeded with ``sampler_seed`` and the method's name (so a method's draws do not depend on which
other methods are tuned), each trained with every ``tune_seeds`` seed. The best setting per method
is the one with the highest mean ``tune_miou``; validation numbers are never read to select. The
confirmation grid then runs the best and the default setting, and the baseline, with ``seeds``,
reported on ``val``. The tuned column is read on the **fresh** confirmation seeds only, those the
selection never trained (:func:`fresh_confirmation`; by default seeds 2-6 against tune seeds 0-1),
since a setting's tune and val mIoU on one seed correlate: on the selection's own seeds the tuned
column would carry the selection's luck. Default and tuned settings are compared on those same seeds;
seeds 0-1 are kept because the study's default columns pair with them.

A tuning of some methods replaces those methods' rows in the folder and keeps the other methods'
(at the same profile digest), so a method added later is tuned alone; ``--confirm-only`` extends the
confirmation of the recorded selection to more seeds, training only the entries it lacks.

``python -m idd_lib.tuning --profile default`` (``make tune PROFILE=default``) writes under
``results/<profile>/tuning/``: ``trials.csv``, ``selection.csv``, ``confirmation.csv``,
``tuning.json`` (the command, commit, budget and wall time) and ``figures/tuning.{png,pdf}``.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Profile
from .losses import METHODS, TERM_SEARCH, get_method

DEFAULT_TRIALS = 6
DEFAULT_TUNE_SEEDS = (0, 1)
DEFAULT_SEEDS = (0, 1, 2, 3, 4, 5, 6)   # fresh: 2-6, disjoint from the tune seeds
MIN_FRESH_SEEDS = 2
BASELINE = "baseline"             # confirmed beside the methods, so the fresh seeds pair with it
DEFAULT_SETTING_INCLUDED = True   # trial 0 of every method is its default setting
TUNING = "tuning"                 # the folder of a profile's tuning results (results/<profile>/, reference/<profile>/)


def _exact(value: float) -> str:
    from .runs import _exact as exact
    return exact(value)


def dimensions(method: str) -> list[tuple[str, tuple[float, ...]]]:
    """The tunable axes of a method: ``weight:<term>`` (absolute weights, the default's multiples)
    per tuned term, and each option a term declares (once, when two terms share it)."""
    axes: dict[str, tuple[float, ...]] = {}
    for term, weight in get_method(method).weights.items():
        space = TERM_SEARCH.get(term)
        if space is None:
            continue
        axes[f"weight:{term}"] = tuple(weight * f for f in space.weight_factors)
        if space.option:
            axes.setdefault(space.option, space.values)
    return list(axes.items())


def _default_point(method: str) -> tuple[float, ...]:
    from .config import LossConfig
    loss = LossConfig(method=method)   # the config defaults the options' values are centred on
    point = []
    for axis, _ in dimensions(method):
        if axis.startswith("weight:"):
            point.append(get_method(method).weights[axis.split(":", 1)[1]])
        else:
            obj = loss
            for part in axis.split(".")[1:]:
                obj = getattr(obj, part)
            point.append(float(obj))
    return tuple(point)


def _setting(method: str, point: Sequence[float], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The grid fields of one point: the method's ``base`` options, which every setting of it
    carries, plus what differs from the default (without base options the default setting has empty
    weights and options, so it is the default table's run, reused)."""
    default = _default_point(method)
    weights, options = {}, dict(base or {})
    for (axis, _), value, default_value in zip(dimensions(method), point, default):
        if value == default_value:
            continue
        if axis.startswith("weight:"):
            weights[axis.split(":", 1)[1]] = value
        else:
            options[axis] = _exact(value)
    from .runs import override_tag
    return {"weights": ",".join(f"{k}={_exact(v)}" for k, v in sorted(weights.items())),
            "options": ",".join(f"{k}={v}" for k, v in sorted(options.items())),
            "tag": override_tag(weights, options)}


def settings(method: str, trials: int, sampler_seed: int = 0,
             base: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """``trials`` settings of ``method``: its default first, then distinct seeded draws; each with
    the method's ``base`` options."""
    if trials < 1:
        raise ValueError(f"trials: expected at least 1 setting per method, got {trials}")
    axes = dimensions(method)
    size = 1
    for _, values in axes:
        size *= len(values)
    default = _default_point(method)
    chosen = [default]
    rng = random.Random(f"{sampler_seed}:{method}")
    while len(chosen) < min(trials, size):
        point = tuple(rng.choice(values) for _, values in axes)
        if point not in chosen:
            chosen.append(point)
    return [_setting(method, point, base) for point in chosen]


def parse_method_options(text: str) -> dict[str, dict[str, str]]:
    """``"cirkd:loss.cirkd.contrast_sample=total; cirkd-mem:..."`` -> the base options per method."""
    from .config import parse_assignments

    chosen: dict[str, dict[str, str]] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        method, sep, options = (part.strip() for part in item.partition(":"))
        if not sep or method not in METHODS:
            raise ValueError(f"method-options: expected '<method>:<key>=<value>,...' items separated by ';' with "
                             f"a method of {sorted(METHODS)}, got {item!r}")
        chosen[method] = parse_assignments(options, f"method-options of {method}")
    return chosen


def tuning_grid(profile: Profile, methods: Sequence[str], trials: int = DEFAULT_TRIALS,
                tune_seeds: Sequence[int] = DEFAULT_TUNE_SEEDS, sampler_seed: int = 0,
                method_options: Mapping[str, Mapping[str, str]] | None = None) -> list[dict[str, Any]]:
    """Every method's settings x ``tune_seeds``, in ``study.ablation_grid``'s form; every run is
    checked before the first one trains. ``method_options``: base options per method (a cheaper
    variant where its default costs too much), carried by all its settings."""
    from .config import parse_assignments, parse_weights
    from .runs import student_config

    base = method_options or {}
    if set(base) - set(methods):
        raise ValueError(f"method-options: {sorted(set(base) - set(methods))} not among the methods tuned")
    grid = [{"method": m, "seed": s, **setting} for m in methods
            for setting in settings(m, trials, sampler_seed, base.get(m)) for s in tune_seeds]
    for run in grid:
        student_config(profile, run["method"], run["seed"], parse_weights(run["weights"]),
                       parse_assignments(run["options"], "options"))
    return grid


def grid_results(profile: Profile, grid: Sequence[Mapping[str, Any]], diverged: frozenset[str] = frozenset()) -> pd.DataFrame:
    """One row per grid entry with what its run folder's result.json holds (a missing one is an error,
    except for the runs named in ``diverged``: ``diverged`` True, no numbers)."""
    from .config import parse_assignments, parse_weights
    from .rundir import RESULT, read_result, relative_location
    from .runs import run_dir, student_config

    rows = []
    for run in grid:
        cfg = student_config(profile, run["method"], run["seed"], parse_weights(run["weights"]),
                             parse_assignments(run["options"], "options"), check=False)
        folder = run_dir(profile, cfg, run["tag"])
        if folder.name in diverged:
            nan = float("nan")
            rows.append({**run, "tune_miou": nan, "miou": nan, "pearson": nan, "diverged": True,
                         "run_dir": relative_location(folder)})
            continue
        if not (folder / RESULT).exists():
            raise FileNotFoundError(f"{folder}: no result.json; run the grid first (study.execute_grid)")
        result = read_result(folder)
        rows.append({**run, "tune_miou": result.get("tune_miou", float("nan")), "miou": result["miou"],
                     "pearson": result.get("agreement/pearson", float("nan")), "diverged": False,
                     "run_dir": relative_location(folder)})  # committed with the tuning: no machine's path
    return pd.DataFrame(rows)


SETTING = ["method", "weights", "options", "tag"]


def select_best(trials: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per method, the setting with the highest mean ``tune_miou`` over its seeds (ties: the earlier
    setting, the default first), and the default's options, tag and mean. A setting with a diverged
    seed is a failed trial: it counts in the budget and cannot be selected. Reads the setting's
    fields, its seed, ``tune_miou`` and ``diverged`` only: no validation number can influence the choice."""
    rows = [{**{k: t[k] for k in SETTING}, "seed": t["seed"], "tune_miou": float(t["tune_miou"]),
             "diverged": bool(t.get("diverged", False))} for t in trials]
    frame = pd.DataFrame(rows, columns=[*SETTING, "seed", "tune_miou", "diverged"])
    if (frame["tune_miou"].isna() & ~frame["diverged"]).any():
        raise ValueError("trials: a run has no tune_miou (a dataset without a tune split cannot be tuned)")
    means = frame.groupby(SETTING, sort=False).agg(tune_miou=("tune_miou", "mean"), seeds=("seed", "nunique"),
                                                   diverged=("diverged", "any")).reset_index()
    means.loc[means["diverged"], "tune_miou"] = float("nan")
    candidates = means[~means["diverged"]]
    if set(candidates["method"]) != set(means["method"]):
        raise ValueError(f"trials: every setting of {sorted(set(means['method']) - set(candidates['method']))} diverged")
    best = candidates.loc[candidates.groupby("method", sort=False)["tune_miou"].idxmax()].reset_index(drop=True)
    best = best.drop(columns="diverged")
    default = means.groupby("method", sort=False).head(1).set_index("method")  # trials come in grid order: default first
    for column in ("options", "tag", "tune_miou"):
        best[f"default_{column}"] = best["method"].map(default[column])
    return best


def confirmation_grid(profile: Profile, best: pd.DataFrame, seeds: Sequence[int] = DEFAULT_SEEDS) -> list[dict[str, Any]]:
    """The baseline and the default and the selected setting of every method with ``seeds`` (the
    selected one once when it is the default)."""
    grid = [{"method": BASELINE, "seed": int(s), "weights": "", "options": "", "tag": ""} for s in seeds]
    for row in best.to_dict("records"):
        chosen = {"weights": row["weights"], "options": row["options"], "tag": row["tag"]}
        default = {"weights": "", "options": row["default_options"], "tag": row["default_tag"]}
        for setting in [default] + ([chosen] if chosen["tag"] != default["tag"] else []):
            grid += [{"method": row["method"], "seed": int(s), **setting} for s in seeds]
    return grid


def confirmation_table(best: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Per run of the confirmation: method, ``setting`` (default / tuned; a method whose best setting
    is its default has both rows from the same runs; the baseline's rows are ``default``), seed, val
    mIoU and distance agreement."""
    rows = [{"method": BASELINE, "setting": "default", "tag": "", "seed": run["seed"], "miou": run["miou"],
             "tune_miou": run["tune_miou"], "pearson": run["pearson"]}
            for run in results[results["method"] == BASELINE].to_dict("records")]
    for row in best.to_dict("records"):
        mine = results[results["method"] == row["method"]]
        for setting, tag in (("default", row["default_tag"]), ("tuned", row["tag"])):
            for run in mine[mine["tag"] == tag].to_dict("records"):
                rows.append({"method": row["method"], "setting": setting, "tag": tag, "seed": run["seed"],
                             "miou": run["miou"], "tune_miou": run["tune_miou"], "pearson": run["pearson"]})
    return pd.DataFrame(rows, columns=["method", "setting", "tag", "seed", "miou", "tune_miou", "pearson"])


def fresh_seeds(record: Mapping[str, Any]) -> list[int]:
    """The confirmation seeds the selection never trained: a tuning record's seeds minus its tune seeds."""
    return [s for s in record["seeds"] if s not in set(record["tune_seeds"])]


def check_fresh_seeds(seeds: Sequence[int], tune_seeds: Sequence[int]) -> None:
    fresh = [s for s in seeds if s not in set(tune_seeds)]
    if len(fresh) < MIN_FRESH_SEEDS:
        raise ValueError(f"seeds: expected at least {MIN_FRESH_SEEDS} confirmation seeds outside the tune seeds "
                         f"{','.join(map(str, tune_seeds))} (the tuned column is read on those), got "
                         f"{','.join(map(str, seeds)) or 'none'}")


def fresh_confirmation(confirmation: pd.DataFrame) -> pd.DataFrame:
    """The confirmation rows on :func:`fresh_seeds` (its ``fresh`` column; a confirmation written
    before that column counts as fresh): where default and tuned settings are compared."""
    if "fresh" not in confirmation:
        return confirmation
    return confirmation[confirmation["fresh"].astype(bool)].reset_index(drop=True)


def tuned_rows(confirmation: pd.DataFrame) -> pd.DataFrame:
    """The tuned column's runs: each method's selected setting and the baseline, on the fresh seeds."""
    fresh = fresh_confirmation(confirmation)
    return fresh[(fresh["setting"] == "tuned") | (fresh["method"] == BASELINE)].reset_index(drop=True)


def read_confirmation(folder: Path) -> pd.DataFrame | None:
    """A tuning folder's ``confirmation.csv`` (None without one)."""
    path = folder / "confirmation.csv"
    return pd.read_csv(path, dtype={"tag": str}).fillna({"tag": ""}) if path.is_file() else None


def tuning_figure(trials: pd.DataFrame, confirmation: pd.DataFrame):
    """Left: mean tune mIoU of every trial setting (default ringed); right: val mIoU of the default
    and the tuned setting over the fresh confirmation seeds (mean ± std)."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(trials["method"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(methods) + 4), 4), sharex=False)
    means = trials.groupby(SETTING, sort=False)["tune_miou"].mean().reset_index()
    for x, method in enumerate(methods):
        mine = means[means["method"] == method]
        left.scatter([x] * len(mine), mine["tune_miou"], s=14, color="tab:blue")
        default = mine.head(1)   # grid order: the default first (with the method's base options, if any)
        left.scatter([x] * len(default), default["tune_miou"], s=60, facecolors="none", edgecolors="k")
    summary = fresh_confirmation(confirmation).groupby(["method", "setting"], sort=False)["miou"].agg(["mean", "std"]).reset_index()
    for offset, (setting, colour) in zip((-0.15, 0.15), (("default", "tab:gray"), ("tuned", "tab:orange"))):
        part = summary[summary["setting"] == setting].set_index("method").reindex(methods)
        right.errorbar([x + offset for x in range(len(methods))], part["mean"], yerr=part["std"], fmt="o",
                       color=colour, label=setting, capsize=3)
    for axis, title in ((left, "tune mIoU per trial setting (ring: default)"),
                        (right, "val mIoU, fresh confirmation seeds (mean ± std)")):
        axis.set_xticks(range(len(methods)), methods, rotation=60, ha="right")
        axis.set_title(title, fontsize=10)
        axis.set_ylabel("mIoU (%)")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_outputs(folder: Path, trials: pd.DataFrame, best: pd.DataFrame, confirmation: pd.DataFrame,
                  record: dict[str, Any]) -> None:
    from .plots import save_figure
    from .rundir import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    trials = trials.assign(diverged=trials.get("diverged", pd.Series(False, index=trials.index)).fillna(False).astype(bool))
    trials.drop(columns=["miou", "pearson"], errors="ignore").to_csv(folder / "trials.csv", index=False)  # tune numbers only
    best.to_csv(folder / "selection.csv", index=False)
    confirmation = confirmation.assign(fresh=~confirmation["seed"].isin(record["tune_seeds"]))
    confirmation.to_csv(folder / "confirmation.csv", index=False)
    import matplotlib.pyplot as plt
    fig = tuning_figure(trials, confirmation)
    save_figure(fig, folder / "figures" / "tuning")
    plt.close(fig)
    atomic_write_text(folder / "tuning.json", json.dumps(record, indent=2) + "\n")


def run_tuning(profile: Profile, methods: Sequence[str], trials: int, tune_seeds: Sequence[int],
               seeds: Sequence[int], sampler_seed: int, command: str, sweep: Mapping[str, Any] | None = None,
               method_options: Mapping[str, Mapping[str, str]] | None = None) -> Path:
    """Tune, select on ``tune``, confirm on ``val``; returns the tuning folder, where the rows of
    methods not tuned now are kept (:func:`merge_outputs`). ``sweep``: how the grids train
    (:func:`idd_lib.sweep.run_sweep`'s executor, workers, threads, slurm), inline by default;
    ``method_options``: :func:`tuning_grid`'s."""
    from .provenance import git_state
    from .sweep import run_sweep

    check_fresh_seeds(seeds, tune_seeds)
    started, git = time.time(), git_state()
    grid = tuning_grid(profile, methods, trials, tune_seeds, sampler_seed, method_options)
    swept = [run_sweep(profile, grid, **(sweep or {}))]
    tried = grid_results(profile, grid, diverged_runs(swept[0]))
    best = select_best(tried.to_dict("records"))
    confirm = confirmation_grid(profile, best, seeds)
    swept.append(run_sweep(profile, confirm, **(sweep or {})))
    table = pd.concat(swept, ignore_index=True)
    trained = table[table["state"] != "skipped"]  # the rest were finished before (the default's trials reappear)
    confirmation = confirmation_table(best, grid_results(profile, confirm))
    record = {"command": command, "profile": profile.name, "options": dict(profile.options),
              "profile_digest": profile_digest(profile),
              "commit": git["commit"], "dirty": git["dirty"], "methods": list(methods),
              "method_options": {m: dict(o) for m, o in (method_options or {}).items()}, "trials": trials,
              "tune_seeds": list(tune_seeds), "seeds": list(seeds), "sampler": "seeded random draws without "
              "replacement from each method's grid", "sampler_seed": sampler_seed,
              "default_setting_included": DEFAULT_SETTING_INCLUDED, "tuning_runs": len(grid),
              "confirmation_runs": len(confirm), "distinct_runs": int(table["run"].nunique()),
              "runs_trained": int(trained["run"].nunique()), "diverged_runs": int(tried["diverged"].sum()),
              "selection": "highest mean tune mIoU per method (a setting with a diverged seed excluded)",
              "wall_time_s": round(time.time() - started, 1)}
    folder = adopt_committed_tuning(profile) or tuning_folder(profile)   # a fresh clone adds to the committed tuning
    write_outputs(folder, *merge_outputs(folder, profile, tried, best, confirmation, record))
    return folder


def diverged_runs(table: pd.DataFrame) -> frozenset[str]:
    """The runs of a sweep table whose training stopped on a non-finite loss or weights (the
    engine's FloatingPointError): a trial's outcome, not a fault of the grid."""
    failed = table[(table["state"] == "failed") & table["error"].astype(str).str.startswith("FloatingPointError")]
    return frozenset(failed["run"])


def tuning_folder(profile: Profile) -> Path:
    from .paths import profile_dir

    return profile_dir(profile.name) / TUNING


COUNTS = ("tuning_runs", "confirmation_runs", "distinct_runs", "runs_trained", "diverged_runs", "wall_time_s")


def merge_outputs(folder: Path, profile: Profile, tried: pd.DataFrame, best: pd.DataFrame,
                  confirmation: pd.DataFrame, record: dict[str, Any]):
    """The new outputs with the folder's rows of the methods not tuned now (and the baseline's seeds
    not confirmed now), when the folder holds a tuning of this profile digest with the same budget;
    the record then lists every command (``commands``) and adds up the counts."""
    old = tuning_record(folder)
    same = {k: old.get(k) for k in ("profile_digest", "trials", "tune_seeds", "sampler_seed")}
    if same != {k: record[k] for k in same}:
        return tried, best, confirmation, record
    methods = set(record["methods"])
    kept = [m for m in old["methods"] if m not in methods]
    old_trials, old_best = (read_settings(folder / f"{name}.csv") for name in ("trials", "selection"))
    old_confirmation = read_confirmation(folder)
    new_baseline = set(confirmation.loc[confirmation["method"] == BASELINE, "seed"])
    old_confirmation = old_confirmation[old_confirmation["method"].isin(kept) | (
        (old_confirmation["method"] == BASELINE) & ~old_confirmation["seed"].isin(new_baseline))]
    merged = {**record, "methods": kept + list(record["methods"]),
              "method_options": {**{m: o for m, o in old.get("method_options", {}).items() if m in kept},
                                 **record["method_options"]},
              "seeds": sorted(set(old["seeds"]) | set(record["seeds"])),
              "commands": [*old.get("commands", [old["command"]]), record["command"]],
              **{k: round(old.get(k, 0) + record[k], 1) if k == "wall_time_s" else old.get(k, 0) + record[k]
                 for k in COUNTS}}
    merged.pop("source", None)
    return (_concat(old_trials, tried, kept), _concat(old_best, best, kept),
            _ordered(pd.concat([old_confirmation, confirmation], ignore_index=True), merged["methods"]), merged)


def read_settings(path: Path) -> pd.DataFrame:
    """``trials.csv`` or ``selection.csv`` with its setting columns as text (an empty one is the default's "")."""
    text = ("weights", "options", "tag", "default_options", "default_tag", "run_dir")
    table = pd.read_csv(path, dtype={c: str for c in text})   # a diverged trial's empty tune_miou stays NaN
    return table.fillna({c: "" for c in text if c in table.columns})


def _concat(old: pd.DataFrame, new: pd.DataFrame, kept: Sequence[str]) -> pd.DataFrame:
    return pd.concat([old[old["method"].isin(kept)], new], ignore_index=True)


def _ordered(confirmation: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """The baseline first, then the methods in tuning order, each by setting and seed."""
    rank = {m: i for i, m in enumerate([BASELINE, *methods])}
    keys = confirmation.assign(_rank=confirmation["method"].map(rank))
    return keys.sort_values(["_rank", "setting", "seed"], kind="stable").drop(columns="_rank").reset_index(drop=True)


def confirm_only(profile: Profile, seeds: Sequence[int], command: str, sweep: Mapping[str, Any] | None = None) -> Path:
    """Extend the folder's confirmation (the recorded selection, the baseline) to ``seeds``, training
    only the entries ``confirmation.csv`` lacks; returns the folder."""
    from .sweep import run_sweep

    folder = adopt_committed_tuning(profile)
    if folder is None or not (folder / "selection.csv").is_file():
        raise FileNotFoundError(f"{tuning_folder(profile)}: no tuning to confirm; run make tune PROFILE={profile.name}")
    record = tuning_record(folder)
    check_fresh_seeds(seeds, record["tune_seeds"])
    started = time.time()
    best = read_settings(folder / "selection.csv")
    confirmation = read_confirmation(folder)
    have = set(zip(confirmation["method"], confirmation["tag"], confirmation["seed"]))
    missing = [run for run in confirmation_grid(profile, best, seeds)
               if (run["method"], run["tag"], run["seed"]) not in have]
    if not missing:
        return folder
    table = run_sweep(profile, missing, **(sweep or {}))
    added = confirmation_table(best, grid_results(profile, missing))
    record = {**record, "seeds": sorted(set(record["seeds"]) | set(seeds)),
              "commands": [*record.get("commands", [record["command"]]), command],
              "confirmation_runs": record["confirmation_runs"] + len(missing),
              "distinct_runs": record["distinct_runs"] + int(table["run"].nunique()),
              "runs_trained": record["runs_trained"] + int((table["state"] != "skipped").sum()),
              "wall_time_s": round(record["wall_time_s"] + time.time() - started, 1)}
    record.pop("source", None)
    trials = read_settings(folder / "trials.csv")
    write_outputs(folder, trials, best, _ordered(pd.concat([confirmation, added], ignore_index=True), record["methods"]),
                  record)
    return folder


def profile_digest(profile: Profile) -> str:
    """What tuning results belong to: the digest of the profile's baseline run (data, networks, schedule)."""
    from .runs import student_config

    return student_config(profile, "baseline", 0, check=False).digest()


def adopt_committed_tuning(profile: Profile) -> Path | None:
    """The profile's tuning folder: ``results/<profile>/tuning`` when ``make tune`` ran here, else a
    copy of the committed ``reference/<profile>/tuning`` when it was tuned at this profile's digest
    (its ``tuning.json`` then says ``source``; a stale copy is replaced or removed); None when neither."""
    from .paths import profile_dir, reference_dir
    from .rundir import atomic_write_text, staged_folder

    folder, committed = profile_dir(profile.name) / TUNING, reference_dir(profile.name) / TUNING
    adopted, committed_record = "source" in tuning_record(folder), tuning_record(committed)
    if (folder / "confirmation.csv").is_file() and not adopted:
        return folder
    if committed_record.get("profile_digest") != profile_digest(profile):
        if adopted:  # a copy of an earlier reference
            shutil.rmtree(folder, ignore_errors=True)
        return None
    with staged_folder(folder) as staging:
        shutil.copytree(committed, staging, dirs_exist_ok=True)
        source = f"committed with the project (reference/{profile.name}/{TUNING}/)"
        record = {**committed_record, "source": source}
        atomic_write_text(staging / "tuning.json", json.dumps(record, indent=2) + "\n")
    return folder


def tuning_record(folder: Path) -> dict[str, Any]:
    """A tuning folder's ``tuning.json`` (empty when it has none)."""
    path = folder / "tuning.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{what}: expected at least one seed")
    return values


def main(argv: list[str] | None = None) -> int:
    from . import study
    from .presets import study_profile
    from .sweep import SweepError

    parser = argparse.ArgumentParser(prog="python -m idd_lib.tuning", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", help="profile (idd_lib.presets.PROFILES)")
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m != "baseline"),
                        help="comma-separated methods to tune (default: every method with a distillation term)")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="settings per method, default included")
    parser.add_argument("--tune-seeds", default=",".join(map(str, DEFAULT_TUNE_SEEDS)), help="seeds of each trial")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)),
                        help="seeds of the confirmation (at least 2 outside --tune-seeds: the tuned column's)")
    parser.add_argument("--confirm-only", action="store_true",
                        help="extend the recorded selection's confirmation to --seeds; train only what it lacks")
    parser.add_argument("--sampler-seed", type=int, default=0, help="seed of the settings' draws")
    parser.add_argument("--options", default="", help='profile options, e.g. "train.iterations=100"')
    parser.add_argument("--method-options", default="", help="base options of some methods, carried by all their "
                        'settings: "cirkd:loss.cirkd.contrast_sample=total;cirkd-mem:..."')
    parser.add_argument("--executor", default="inline", help="how the grids train: inline, local or slurm (idd_lib.sweep)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    args = parser.parse_args(argv)
    command = "python -m idd_lib.tuning " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    try:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        for method in methods:
            get_method(method)
        sweep = {"executor": args.executor, "workers": args.workers, "threads": args.threads}
        if args.confirm_only:
            folder = confirm_only(study_profile(args.profile, args.options), _ints(args.seeds, "seeds"), command, sweep)
        else:
            folder = run_tuning(study_profile(args.profile, args.options), methods, args.trials,
                                _ints(args.tune_seeds, "tune-seeds"), _ints(args.seeds, "seeds"), args.sampler_seed,
                                command, sweep, parse_method_options(args.method_options))
    except (ValueError, FileNotFoundError, study.StudyError, SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"[tuning] {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
