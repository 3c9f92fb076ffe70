"""An equal tuning budget for every method, selected on the held-out ``tune`` split.

Each loss term declares what may vary (its ``search_space``: the weight on a log grid around the
method's default weight, a temperature where it has one; :class:`~idd_lib.losses.SearchSpace`).
Every method gets the same budget: ``trials`` settings, **the default setting included** as the
first, the others drawn without replacement from the product of its terms' spaces by a sampler
seeded with ``sampler_seed`` and the method's name (so a method's draws do not depend on which
other methods are tuned), each trained with every ``tune_seeds`` seed. The best setting per method
is the one with the highest mean ``tune_miou``; validation numbers are never read to select. The
confirmation grid then runs the best and the default setting with ``seeds`` (>= 5), reported on
``val``.

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
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
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


def grid_results(profile: Profile, grid: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per grid entry with what its run folder's result.json holds (a missing one is an error)."""
    from .config import parse_assignments, parse_weights
    from .rundir import RESULT, read_result, relative_location
    from .runs import run_dir, student_config

    rows = []
    for run in grid:
        cfg = student_config(profile, run["method"], run["seed"], parse_weights(run["weights"]),
                             parse_assignments(run["options"], "options"), check=False)
        folder = run_dir(profile, cfg, run["tag"])
        if not (folder / RESULT).exists():
            raise FileNotFoundError(f"{folder}: no result.json; run the grid first (study.execute_grid)")
        result = read_result(folder)
        rows.append({**run, "tune_miou": result.get("tune_miou", float("nan")), "miou": result["miou"],
                     "pearson": result.get("agreement/pearson", float("nan")),
                     "run_dir": relative_location(folder)})  # committed with the tuning: no machine's path
    return pd.DataFrame(rows)


SETTING = ["method", "weights", "options", "tag"]


def select_best(trials: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per method, the setting with the highest mean ``tune_miou`` over its seeds (ties: the earlier
    setting, the default first), and the default's options, tag and mean. Reads the setting's
    fields, its seed and ``tune_miou`` only: no validation number can influence the choice."""
    rows = [{**{k: t[k] for k in SETTING}, "seed": t["seed"], "tune_miou": float(t["tune_miou"])} for t in trials]
    frame = pd.DataFrame(rows, columns=[*SETTING, "seed", "tune_miou"])
    if frame["tune_miou"].isna().any():
        raise ValueError("trials: a run has no tune_miou (a dataset without a tune split cannot be tuned)")
    means = frame.groupby(SETTING, sort=False).agg(tune_miou=("tune_miou", "mean"), seeds=("seed", "nunique"))
    means = means.reset_index()
    best = means.loc[means.groupby("method", sort=False)["tune_miou"].idxmax()].reset_index(drop=True)
    default = means.groupby("method", sort=False).head(1).set_index("method")  # trials come in grid order: default first
    for column in ("options", "tag", "tune_miou"):
        best[f"default_{column}"] = best["method"].map(default[column])
    return best


def confirmation_grid(profile: Profile, best: pd.DataFrame, seeds: Sequence[int] = DEFAULT_SEEDS) -> list[dict[str, Any]]:
    """The default and the selected setting of every method with ``seeds`` (the selected one once
    when it is the default)."""
    grid = []
    for row in best.to_dict("records"):
        chosen = {"weights": row["weights"], "options": row["options"], "tag": row["tag"]}
        default = {"weights": "", "options": row["default_options"], "tag": row["default_tag"]}
        for setting in [default] + ([chosen] if chosen["tag"] != default["tag"] else []):
            grid += [{"method": row["method"], "seed": int(s), **setting} for s in seeds]
    return grid


def confirmation_table(best: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Per run of the confirmation: method, ``setting`` (default / tuned; a method whose best setting
    is its default has both rows from the same runs), seed, val mIoU and distance agreement."""
    rows = []
    for row in best.to_dict("records"):
        mine = results[results["method"] == row["method"]]
        for setting, tag in (("default", row["default_tag"]), ("tuned", row["tag"])):
            for run in mine[mine["tag"] == tag].to_dict("records"):
                rows.append({"method": row["method"], "setting": setting, "tag": tag, "seed": run["seed"],
                             "miou": run["miou"], "tune_miou": run["tune_miou"], "pearson": run["pearson"]})
    return pd.DataFrame(rows, columns=["method", "setting", "tag", "seed", "miou", "tune_miou", "pearson"])


def tuning_figure(trials: pd.DataFrame, confirmation: pd.DataFrame):
    """Left: mean tune mIoU of every trial setting (default ringed); right: val mIoU of the default
    and the tuned setting over the confirmation seeds (mean ± std)."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(trials["method"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(methods) + 4), 4), sharex=False)
    means = trials.groupby(SETTING, sort=False)["tune_miou"].mean().reset_index()
    for x, method in enumerate(methods):
        mine = means[means["method"] == method]
        left.scatter([x] * len(mine), mine["tune_miou"], s=14, color="tab:blue")
        default = mine.head(1)   # grid order: the default first (with the method's base options, if any)
        left.scatter([x] * len(default), default["tune_miou"], s=60, facecolors="none", edgecolors="k")
    summary = confirmation.groupby(["method", "setting"], sort=False)["miou"].agg(["mean", "std"]).reset_index()
    for offset, (setting, colour) in zip((-0.15, 0.15), (("default", "tab:gray"), ("tuned", "tab:orange"))):
        part = summary[summary["setting"] == setting].set_index("method").reindex(methods)
        right.errorbar([x + offset for x in range(len(methods))], part["mean"], yerr=part["std"], fmt="o",
                       color=colour, label=setting, capsize=3)
    for axis, title in ((left, "tune mIoU per trial setting (ring: default)"),
                        (right, "val mIoU, confirmation seeds (mean ± std)")):
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
    trials.drop(columns=["miou", "pearson"]).to_csv(folder / "trials.csv", index=False)  # tune numbers only
    best.to_csv(folder / "selection.csv", index=False)
    confirmation.to_csv(folder / "confirmation.csv", index=False)
    import matplotlib.pyplot as plt
    fig = tuning_figure(trials, confirmation)
    save_figure(fig, folder / "figures" / "tuning")
    plt.close(fig)
    atomic_write_text(folder / "tuning.json", json.dumps(record, indent=2) + "\n")


def run_tuning(profile: Profile, methods: Sequence[str], trials: int, tune_seeds: Sequence[int],
               seeds: Sequence[int], sampler_seed: int, command: str, sweep: Mapping[str, Any] | None = None,
               method_options: Mapping[str, Mapping[str, str]] | None = None) -> Path:
    """Tune, select on ``tune``, confirm on ``val``; returns the tuning folder. ``sweep``: how the
    grids train (:func:`idd_lib.sweep.run_sweep`'s executor, workers, threads, slurm), inline by default;
    ``method_options``: :func:`tuning_grid`'s."""
    from .paths import profile_dir
    from .provenance import git_state
    from .sweep import run_sweep

    started, git = time.time(), git_state()
    grid = tuning_grid(profile, methods, trials, tune_seeds, sampler_seed, method_options)
    swept = [run_sweep(profile, grid, **(sweep or {}))]
    tried = grid_results(profile, grid)
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
              "runs_trained": int(trained["run"].nunique()), "selection": "highest mean tune mIoU per method",
              "wall_time_s": round(time.time() - started, 1)}
    folder = profile_dir(profile.name) / TUNING
    write_outputs(folder, tried, best, confirmation, record)
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
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="seeds of the confirmation")
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
        folder = run_tuning(study_profile(args.profile, args.options), methods, args.trials,
                            _ints(args.tune_seeds, "tune-seeds"), _ints(args.seeds, "seeds"), args.sampler_seed,
                            command, {"executor": args.executor, "workers": args.workers, "threads": args.threads},
                            parse_method_options(args.method_options))
    except (ValueError, FileNotFoundError, study.StudyError, SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"[tuning] {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
