"""Tables of the study and REPORT.md.

Per-method mean ± std and 95% CI over seeds, paired tests (same seeds) against the baseline and
against the best other method, per-class IoU, the per-run provenance table, and REPORT.md.


Every number is a last-iterate checkpoint evaluated single-scale on the validation split.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .names import blank_missing, p_text, printed


def results_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """One row per run with its ``label``: the method and its tag; a label that two different
    configurations share (the same tag given to other options) gets each one's variant digest."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise ValueError("no finished runs to summarise; run 02_distill/03_ablation first")
    frame["label"] = frame.apply(lambda r: r["method"] + (f" [{r['tag']}]" if r.get("tag") else ""), axis=1)
    if "variant" in frame:
        shared = frame.groupby("label")["variant"].transform("nunique") > 1
        frame.loc[shared, "label"] += " #" + frame.loc[shared, "variant"].str[:6]
    if "other_teacher" in frame:  # distilled from another teacher than the profile's (teacher.*/data.* options)
        other = frame["other_teacher"].fillna(False).astype(bool)
        frame.loc[other, "label"] += " (teacher " + frame.loc[other, "teacher"].str[:6] + ")"
    return frame


def paired_difference(values: pd.Series, other: pd.Series) -> tuple[float, float]:
    """Mean difference and paired t-test p-value of two seed-indexed series on their shared seeds;
    NaN p-value below 2 shared seeds or when every difference is the same."""
    a, b = values.align(other, join="inner")
    if len(a) == 0:
        return float("nan"), float("nan")
    delta = a - b
    if len(a) < 2 or not delta.std() > 0:
        return float(delta.mean()), float("nan")
    return float(delta.mean()), float(stats.ttest_rel(a, b).pvalue)


def current_results(profile, grid: Sequence[Mapping] | None = None) -> list[dict]:
    """The finished student runs of ``profile`` whose config digest is what the code resolves today
    for their method, seed, weights and options. A run left in the folder by an earlier version of
    the config (older code, changed profile) is skipped, so it never mixes into the statistics.
    ``grid``: only the runs it names (method, seed, tag), e.g. the study's own
    (:func:`idd_lib.study.ablation_grid`), so runs made by hand or by the tuning stay out."""
    from .config import teacher_of, variant_digest
    from .presets import get_profile
    from .runs import collect_results, student_config

    profile = get_profile(profile) if isinstance(profile, str) else profile
    named = None if grid is None else {(run["method"], int(run["seed"]), run["tag"]) for run in grid}
    kept = []
    for result in collect_results(profile):
        if named is not None and (result["method"], int(result["seed"]), result.get("tag") or "") not in named:
            continue
        try:
            cfg = student_config(profile, result["method"], result["seed"], result.get("weights_override") or None,
                                 result.get("options") or None, check=False)
        except ValueError:  # a method or option that no longer exists
            continue
        if cfg.digest() == result.get("config_digest"):
            teacher = teacher_of(cfg).digest()
            kept.append({**result, "variant": variant_digest(cfg), "teacher": teacher,
                         "other_teacher": teacher != profile.teacher_config().digest()})
    return kept


def summarize(frame: pd.DataFrame, baseline: str = "baseline", value: str = "miou", label: str = "mIoU",
              higher_is_better: bool = True) -> pd.DataFrame:
    """One row per method label: seeds, mean, std, 95% CI half-width (t), and paired t-tests on
    the same seeds against the baseline and against the best other method (the other label with
    the best mean; for the best method that is the runner-up)."""
    rows = []
    by_seed = {name: group.set_index("seed")[value].astype(float) for name, group in frame.groupby("label", sort=False)}
    means = {name: series.mean() for name, series in by_seed.items()}
    for name, series in by_seed.items():
        values = series.to_numpy()
        n = len(values)
        std = float(values.std(ddof=1)) if n > 1 else float("nan")
        mean, ci = mean_ci(values)
        row = {"method": name, "seeds": n, "mean": mean, "std": std, "ci95": ci,
               label: f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"}
        if name != baseline and baseline in by_seed:
            row["delta_vs_baseline"], row["p_vs_baseline"] = paired_difference(series, by_seed[baseline])
        others = {k: v for k, v in means.items() if k != name}
        if others:
            best = (max if higher_is_better else min)(others, key=others.get)
            row["best_other"] = best
            row["delta_vs_best_other"], row["p_vs_best_other"] = paired_difference(series, by_seed[best])
        rows.append(row)
    return pd.DataFrame(rows)


def mean_ci(values) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% t-interval (NaN half-width below 2 values)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return float(values.mean()) if n else float("nan"), float("nan")
    return float(values.mean()), float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))


TEST_COLUMNS = ("ci95", "delta_vs_baseline", "p_vs_baseline", "best_other", "delta_vs_best_other", "p_vs_best_other")


def seed_table(frame: pd.DataFrame, columns: Sequence[str], by: str | Sequence[str] = "method",
               test: str | None = None, baseline: str = "baseline", reference: str | None = None,
               higher_is_better: bool = True) -> pd.DataFrame:
    """Mean (column ``<name>``) and std (``<name> std``) over seeds of ``columns`` per ``by`` group,
    with the number of seeds; with ``test``, that column's 95% CI and paired tests (:func:`summarize`)
    as ``<test> <statistic>`` columns. A ``reference`` group (the teacher) is shown but not tested."""
    keys = [by] if isinstance(by, str) else list(by)
    groups = frame.groupby(keys, sort=False)
    table = groups[list(columns)].agg(["mean", "std"])
    table.columns = [name if stat == "mean" else f"{name} {stat}" for name, stat in table.columns]
    table.insert(0, "seeds", groups.size())
    table = table.reset_index()
    if test is not None:
        if len(keys) != 1:
            raise ValueError(f"by: paired tests need one grouping column, got {keys}")
        tested = frame[frame[keys[0]] != reference] if reference is not None else frame
        tests = summarize(tested.assign(label=tested[keys[0]]), baseline, test, test, higher_is_better)
        keep = [c for c in TEST_COLUMNS if c in tests]
        tests = tests[["method", *keep]].rename(columns={"method": keys[0], **{c: f"{test} {c}" for c in keep}})
        table = table.merge(tests, on=keys[0], how="left")
    return table


def per_class_table(frame: pd.DataFrame, class_names: Sequence[str],
                    teacher: Sequence[float] | None = None) -> pd.DataFrame:
    """Mean per-class IoU per method (rows) and class (columns), the ``teacher``'s IoU first when given."""
    ious = pd.DataFrame(frame["per_class_iou"].tolist(), columns=list(class_names))
    ious["method"] = frame["label"].to_numpy()
    table = ious.groupby("method", sort=False).mean()
    if teacher is None:
        return table
    return pd.concat([pd.DataFrame([list(teacher)], index=["teacher"], columns=table.columns), table]).rename_axis("method")


def highlight_changes(table: pd.DataFrame, baseline: str = "baseline", top: int = 3) -> pd.DataFrame:
    """Markdown-ready copy: the ``top`` largest per-class changes vs baseline of each row in bold."""
    text = table.map(lambda v: f"{v:.1f}")
    if baseline not in table.index:
        return text
    for method in table.index.drop([baseline, *(["teacher"] if "teacher" in table.index else [])]):
        delta = table.loc[method] - table.loc[baseline]
        for cls in delta.abs().nlargest(top).index:
            text.loc[method, cls] = f"**{table.loc[method, cls]:.1f} ({delta[cls]:+.1f})**"
    return text


def write_table(frame: pd.DataFrame, stem: str | Path, index: bool = False) -> str:
    """CSV (the data as is), Markdown and LaTeX (booktabs; :func:`printed`) next to each other;
    returns the Markdown."""
    from .export import latex_table

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=index)
    shown = printed(frame, index)
    markdown = blank_missing(shown).to_markdown(index=index, floatfmt=".2f")
    stem.with_suffix(".md").write_text(markdown + "\n")
    stem.with_suffix(".tex").write_text(latex_table(shown, index))
    return markdown


def _md_table(path: Path) -> str:
    return path.read_text().strip() if path.exists() else f"_missing: {path.name} (run the notebook that writes it)_"


def _figure(folder: Path, stem: str, caption: str) -> str:
    png = folder / "figures" / f"{stem}.png"
    if not png.exists():
        return f"_missing figure: {stem} (run the notebook that draws it)_"
    return f"![{caption}](figures/{stem}.png)\n\n{caption} ([PDF](figures/{stem}.pdf))"


def runs_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: what produced it (method label with its overrides, config digest,
    seed, git commit, package versions, device) and its wall time, from the run folder's
    result.json and provenance.json."""
    from .rundir import read_provenance

    rows = []
    for run in frame.to_dict("records"):
        prov = read_provenance(run["run_dir"])
        git = prov.get("git", {})
        commit = git.get("commit", "unknown")[:10] + ("+dirty" if git.get("dirty") else "")
        versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())
        rows.append({"run": Path(run["run_dir"]).name, "method": run["label"], "seed": run["seed"],
                     "mIoU": run["miou"], "config": run.get("config_digest", ""), "commit": commit,
                     "versions": versions or "unknown", "device": prov.get("device", "unknown"),
                     "wall time (s)": run.get("wall_time_s", float("nan"))})
    return pd.DataFrame(rows)


def _header_section(profile) -> list[str]:
    import datetime

    from .provenance import git_state

    git = git_state()
    return [
        f"# IDD study: profile `{profile.name}`",
        "",
        f"{profile.description}. Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"from commit `{git['commit'][:10]}`{' (dirty tree)' if git['dirty'] else ''}.",
        "",
        "IDD and PID are implemented from the paper's abstract plus our reconstruction (docs/method.md in the "
        "repository); every option the paper does not fix is a configurable choice. Numbers are "
        "last-iterate checkpoints, single-scale whole-image validation mIoU, over seeds "
        f"{', '.join(map(str, profile.seeds))}.",
        "",
    ]


def _teacher_origin(folder: Path) -> str:
    """Where the teacher came from: the package's shipped teacher (installed, not trained here) or this study."""
    from .rundir import read_provenance

    prov = read_provenance(folder)
    if "source" not in prov:
        return "Trained by this study."
    commit = prov.get("git", {}).get("commit", "unknown")[:10]
    machine = prov.get("machine") or {}
    return (f"The shipped teacher (`{prov['source'].get('artifact')}`), trained at commit `{commit}` on "
            f"{machine.get('cpu', 'an unrecorded CPU')}; installed, not trained here (docs/reproducibility.md in "
            "the repository).")


def _teacher_section(profile, teacher_miou: float, origin: str = "") -> list[str]:
    student, teacher = profile.student, profile.teacher
    return [
        "## Teacher",
        "",
        f"Teacher: ResNet {teacher.block} blocks {teacher.layers}, width x{teacher.width}, {teacher.head.upper()} "
        f"head ({teacher.head_channels} ch), {profile.teacher_train.iterations} iterations: "
        f"**val mIoU {teacher_miou:.2f}**. Student: blocks {student.layers}, width x{student.width}, "
        f"{student.head.upper()} head ({student.head_channels} ch), {profile.student_train.iterations} iterations."
        + (f" {origin}" if origin else ""),
        "",
    ]


def _students_section(folder: Path) -> list[str]:
    return [
        "## Students: validation mIoU (%)",
        "",
        "mean ± std over seeds; 95% CI ± = half-width of the 95% t-interval; paired t-tests on the same seeds "
        "against the baseline (Δ and p vs baseline) and against the best other method by mean mIoU (best "
        "other, Δ and p vs best other; for the best method, the runner-up); statistics a single seed cannot "
        "give are left out. These p-values are uncorrected; the Holm-corrected ones, the confidence intervals of the "
        "differences and the smallest detectable difference are under Comparisons.",
        "",
        _md_table(folder / "tables" / "methods.md"),
        "",
        _figure(folder, "miou", "Validation mIoU per method (error bars: seed std; dashed: teacher)."),
        "",
        "## Per-class IoU (%)",
        "",
        "The teacher, then each method's mean over seeds; in bold the three largest changes of each method "
        "against the baseline.",
        "",
        _md_table(folder / "tables" / "per_class_iou.md"),
        "",
    ]


def _distances_section(folder: Path) -> list[str]:
    return [
        "## Claim 1: inter-class distances",
        "",
        "Class centres of the head features accumulated over the validation images (not one batch), "
        "distances normalised by their mean off-diagonal entry.",
        "",
        _figure(folder, "distance_heatmaps", "Class-centre distance matrices over the validation set "
                "(top, shared scale) and their differences to the teacher (bottom)."),
        "",
        "Agreement of each student's matrix with the teacher's (upper triangle; Pearson and Spearman "
        "correlation, Frobenius distance relative to the teacher's norm), mean ± std over seeds, and the "
        "Pearson agreement's paired tests against the baseline and the best other method:",
        "",
        _md_table(folder / "tables" / "distance_agreement.md"),
        "",
        _figure(folder, "agreement_curves", "Agreement with the teacher's distance matrix during training "
                "(logged at every validation; line: mean over seeds, band: min-max)."),
        "",
        "## Feature space (t-SNE)",
        "",
        _figure(folder, "tsne", "t-SNE of the same class-balanced pixels in teacher and student feature spaces; "
                "stars: class centres."),
        "",
        _md_table(folder / "tables" / "tsne_timing.md"),
        "",
    ]


def _position_section(folder: Path, profile) -> list[str]:
    return [
        "## Claim 2: position information",
        "",
        "A fresh linear probe on 3x3 neighbourhoods of the frozen head features (ridge regression, "
        "replicate padding) regresses the x ramp, the y ramp and a centred Gaussian; fitted on "
        "training images, R² on validation images (mean ± std over seeds; paired tests of the mean R²).",
        "",
        _md_table(folder / "tables" / "position_probe.md"),
        "",
        _figure(folder, "position_probe", "Held-out R² of the position probe per network and position map."),
        "",
    ] + (_sweep_lines(folder, profile) if profile.data.dataset == "synthetic" else [])


def _sweep_lines(folder: Path, profile) -> list[str]:
    """The position-prior sweep: it varies the generated benchmark, so only a synthetic study has it."""
    sweep = profile.sweep
    size = (f"a reduced copy of the study ({sweep.num_train} training / {sweep.num_val} validation images of "
            f"{sweep.height}x{sweep.width}, teacher {sweep.teacher_iterations} and students "
            f"{sweep.student_iterations} iterations): indicative only" if sweep.resized() else
            "the study's own sizes and schedules, and at the study's prior its own teacher and runs")
    teachers = ", ".join(f"prior {p:g}: {_teacher_ious(profile.sweep_profile(p))}" for p in sweep.priors)
    return [
        f"**Position-prior sweep.** The benchmark's `position_prior` at "
        f"{', '.join(f'{p:g}' for p in sweep.priors)} (0: position uninformative, 1: Cityscapes-like, "
        f"2: strong), each with its own data and teacher, for {', '.join(sweep.methods)}, seeds "
        f"{', '.join(map(str, sweep.seeds))}; {size}. The teachers' lowest class IoU: {teachers}.",
        "",
        _md_table(folder / "tables" / "position_sweep.md"),
        "",
        _figure(folder, "position_sweep", "mIoU and position-probe R² against the position prior (teacher dashed)."),
        "",
    ]


def _teacher_ious(profile) -> str:
    """The weakest class of a profile's trained teacher, e.g. ``46.8 (pole)``; ``not trained`` without one."""
    from .rundir import RESULT, read_result
    from .runs import teacher_dir

    folder = teacher_dir(profile)
    if not (folder / RESULT).exists():
        return "not trained"
    result = read_result(folder)
    ious = result.get("per_class_iou")
    if not ious:
        return f"mIoU {result['miou']:.1f}"
    worst = min(range(len(ious)), key=lambda k: ious[k])
    names = result.get("class_names") or [str(k) for k in range(len(ious))]
    return f"{ious[worst]:.1f} ({names[worst]})"


def default_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The default-setting runs of the profile's own teacher (no tag, no other teacher), with the
    columns the comparisons and the verdict read: method, label, seed, miou, tune_miou, pearson."""
    keep = frame["tag"].fillna("") == "" if "tag" in frame else pd.Series(True, index=frame.index)
    if "other_teacher" in frame:
        keep &= ~frame["other_teacher"].fillna(False).astype(bool)
    runs = frame[keep].copy()
    runs["pearson"] = runs["agreement/pearson"] if "agreement/pearson" in runs else float("nan")
    if "tune_miou" not in runs:
        runs["tune_miou"] = float("nan")
    return runs[["method", "label", "seed", "miou", "tune_miou", "pearson"]]


def with_tuning_defaults(runs: pd.DataFrame, confirmation: pd.DataFrame | None) -> pd.DataFrame:
    """The study's default-setting runs plus the tuning's default-setting runs of the methods the study
    does not run (``tuning/confirmation.csv``) on the study's seeds, so the comparisons and the verdict's
    strongest competitor see every method that has default-setting seeds, paired with the study's."""
    if confirmation is None:
        return runs
    extra = confirmation[(confirmation["setting"] == "default") & ~confirmation["method"].isin(runs["method"])
                         & confirmation["seed"].isin(runs["seed"])]
    return pd.concat([runs, extra.assign(label=default_labels(extra))[runs.columns]], ignore_index=True)


def default_labels(confirmation: pd.DataFrame) -> pd.Series:
    """Each confirmation row's method, named with its default setting's tag where the tuning gave
    the method base options (``make tune METHOD_OPTIONS=...``): that default is a variant."""
    tags = confirmation[confirmation["setting"] == "default"].groupby("method")["tag"].first().fillna("")
    tag = confirmation["method"].map(tags).fillna("")
    return confirmation["method"] + tag.map(lambda t: f" [{t}]" if t else "")


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def _comparison_markdown(table: pd.DataFrame) -> str:
    columns = [c for c in ("family", "method", "reference", "n", "effect", "ci_low", "ci_high", "p", "p_holm",
                           "alpha_step", "mdd", "seeds_needed", "gap_closed") if c in table]
    if not len(table):
        return "_no comparisons yet_"
    return blank_missing(printed(table[columns])).to_markdown(index=False, floatfmt=".3g")


def _verdict_section(folder: Path, runs: pd.DataFrame, confirmation: pd.DataFrame | None) -> list[str]:
    from .tuning import tuned_rows
    from .verdict import RULE, sesoi_markdown, verdict_markdown, verdict_table

    tables = folder / "tables"
    tuned = tuned_rows(confirmation) if confirmation is not None else None
    table = verdict_table(runs, _read_csv(tables / "position_probe_seeds.csv"),
                          _read_csv(tables / "position_sweep_seeds.csv"), tuned)
    write_table(table, tables / "verdict")
    return [
        "## Verdict",
        "",
        "One row per claim, under the default settings of every method and under each method's setting tuned on "
        "the held-out `tune` split (equal budget, `make tune`; read on the confirmation seeds the selection never "
        "trained). `origin`: a claim of the paper (its abstract) or a "
        "hypothesis of this study. Columns: n seeds, the seed-paired difference (effect) and its 95% t-interval, "
        "the claim's smallest effect of interest (SESOI), the Holm-corrected p of the directional test and of "
        "TOST's upper test, the alpha of the row's Holm step, the smallest difference the directional test "
        "detects at that alpha (power 0.8), and, where inconclusive, the seeds that would find the SESOI. "
        f"Reading rule: {RULE}",
        "",
        verdict_markdown(table),
        "",
        "The smallest effects of interest, declared before the data (docs/analysis.md gives their reasons):",
        "",
        sesoi_markdown(),
        "",
    ]


def _comparisons_section(folder: Path, runs: pd.DataFrame, teacher_miou: float) -> list[str]:
    from .comparisons import MIOU_SESOI, comparison_table

    table = comparison_table(runs.assign(label=runs["method"]), teacher=teacher_miou)
    write_table(table, folder / "tables" / "comparisons")
    return [
        "## Comparisons: paired differences, Holm-corrected",
        "",
        "Val mIoU, default settings (the study's runs and, for methods it does not run, the tuning's default-setting "
        "runs). Family `vs baseline`: every method against the baseline (gap closed: share "
        "of the teacher-baseline gap its mean closes); family `idd vs others`: IDD against every other method. "
        "p (Holm): Holm's correction within a family; Holm step α: the alpha Holm's step-down procedure tests "
        "the row at; MDD: the smallest paired difference a two-sided test at that alpha detects with power 0.8 "
        "at this n and spread; seeds needed: for rows Holm does not reject, the seeds that test would need to "
        f"find {MIOU_SESOI:g} mIoU.",
        "",
        _comparison_markdown(table),
        "",
    ]


def tuned_method_table(confirmation: pd.DataFrame, runs: pd.DataFrame, teacher_miou: float) -> pd.DataFrame:
    """Per method: val mIoU mean ± std of its default and its tuned setting over the fresh confirmation
    seeds (those the selection never trained), the tuned setting's tag, and each setting's
    Holm-corrected paired test against the baseline on those seeds (the study's baseline runs where
    the confirmation has none) with the share of the teacher-baseline gap closed."""
    from .comparisons import comparison_table
    from .tuning import BASELINE, fresh_confirmation

    confirmation = fresh_confirmation(confirmation)
    own = confirmation[confirmation["method"] == BASELINE]
    base = (own if len(own) else runs[runs["method"] == BASELINE]).assign(label=BASELINE)[runs.columns]
    confirmation = confirmation[confirmation["method"] != BASELINE]
    columns = {}
    for setting in ("default", "tuned"):
        part = confirmation[confirmation["setting"] == setting].assign(label=lambda f: f["method"])
        table = comparison_table(pd.concat([base, part[base.columns.intersection(part.columns)]]), teacher=teacher_miou)
        columns[setting] = table[table["family"] == "vs baseline"].set_index("method")
    rows, labels = [], default_labels(confirmation)
    for method, group in confirmation.groupby("method", sort=False):
        row = {"method": labels[group.index[0]], "tuned setting": next(iter(group.loc[group["setting"] == "tuned", "tag"].fillna("")),
                                                       "") or "(default)"}
        for setting in ("default", "tuned"):
            values = group[group["setting"] == setting]["miou"]
            row[f"{setting} mIoU"] = f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n {len(values)})"
            stat = columns[setting].loc[method] if method in columns[setting].index else None
            row[f"{setting} Δ vs baseline (p Holm)"] = "" if stat is None else f"{stat['effect']:+.2f} ({p_text(stat['p_holm'])})"
            row[f"{setting} gap closed"] = "" if stat is None else f"{stat.get('gap_closed', float('nan')):.0%}"
        rows.append(row)
    return pd.DataFrame(rows)


def _tuning_runs(record: dict) -> str:
    """How many runs a tuning record covers and, where it says so, how many its command trained."""
    if "distinct_runs" not in record:  # a record written before these fields
        return f"{record['tuning_runs'] + record['confirmation_runs']} grid entries"
    return (f"{record['distinct_runs']} runs ({record['runs_trained']} trained by the command, the others "
            "finished before)")


def _tuning_section(folder: Path, runs: pd.DataFrame, teacher_miou: float, tuning: Path | None,
                    confirmation: pd.DataFrame | None) -> list[str]:
    from .tuning import BASELINE, fresh_seeds, tuning_record

    if confirmation is None:
        return ["## Tuned settings", "", "_no tuning results: `make tune PROFILE=<profile>` (idd_lib/tuning.py) "
                "tunes every method with an equal budget on the `tune` split_", ""]
    record = tuning_record(tuning)
    markdown = write_table(tuned_method_table(confirmation, runs, teacher_miou), folder / "tables" / "tuned_methods")
    commands = record.get("commands", [record["command"]])
    tuned_methods = record.get("methods") or [m for m in confirmation["method"].unique() if m != BASELINE]
    return [
        "## Tuned settings",
        "",
        f"Methods tuned: {', '.join(f'`{m}`' for m in tuned_methods)}, each with the same budget: "
        f"{record['trials']} settings (its default included) x seeds "
        f"{', '.join(map(str, record['tune_seeds']))} on the held-out `tune` split, selected by mean tune mIoU; the "
        f"selected and the default setting, and the baseline, then ran with seeds "
        f"{', '.join(map(str, record['seeds']))} on `val`. The table reads the fresh seeds "
        f"{', '.join(map(str, fresh_seeds(record)))} only, which the selection never trained (on its own seeds the "
        f"tuned setting would carry the selection's luck). Commands "
        f"{'; '.join(f'`{c}`' for c in commands)}, last commit `{record['commit'][:10]}`, "
        f"{_tuning_runs(record)}, {record['wall_time_s'] / 3600:.1f} h"
        + (f"; {record['source']}, not re-run by this study." if record.get("source") else "."),
        "",
        markdown,
        "",
        "![Tuning: tune mIoU of every trial, val mIoU default vs tuned](tuning/figures/tuning.png)"
        if (tuning / "figures" / "tuning.png").exists() else "_missing figure: tuning/figures/tuning.png_",
        "",
    ]


def _benchmark_and_runs_section(folder: Path, provenance_md: str, synthetic: bool) -> list[str]:
    benchmark = [
        "## The benchmark",
        "",
        _figure(folder, "synthetic_samples", "Samples of the embedded synthetic street scenes and their labels."),
        "",
        _figure(folder, "synthetic_knobs", "The knobs: position prior (rows) and appearance overlap (columns)."),
        "",
    ]
    return (benchmark if synthetic else []) + [
        "## Runs",
        "",
        "Every student run: config digest (the hash of its resolved config, also in its folder name; the "
        "config itself is the folder's `config.json`), seed, git commit, package versions, device and "
        "wall time (from the folder's `provenance.json` and `result.json`). Runs of an earlier version of "
        "a config left in the folder are not counted anywhere in this report.",
        "",
        provenance_md,
        "",
    ]


class ReportError(ValueError):
    """A report asked of a results folder that holds no study; the message says which command to run."""


def _check_study(folder: Path, teacher: Path, profile_name: str) -> None:
    """One line naming the command to run when ``folder`` holds no study (no teacher result, no runs)."""
    from .rundir import RESULT

    command = f"make study PROFILE={profile_name}"
    if not (teacher / RESULT).is_file():
        raise ReportError(f"{folder}: no study of profile {profile_name!r} here (no trained teacher in "
                          f"{teacher.parent}); run '{command}' first (IDD_RESULTS selects another results folder)")
    if not (folder / "runs").is_dir():
        raise ReportError(f"{folder}: no study of profile {profile_name!r} here (no runs/ folder); "
                          f"run '{command}' first (IDD_RESULTS selects another results folder)")


def write_report(profile) -> Path:
    """Compose ``results/<profile>/REPORT.md`` from the runs, tables and figures on disk, one
    section function per part of the report (``profile``: a name or a configured
    :class:`~idd_lib.config.Profile`)."""
    from .export import markdown_to_html
    from .paths import profile_dir
    from .presets import get_profile
    from .rundir import read_result
    from .runs import teacher_dir
    from .study import ablation_grid
    from .tuning import adopt_committed_tuning, read_confirmation

    profile = get_profile(profile) if isinstance(profile, str) else profile
    folder = profile_dir(profile.name)
    _check_study(folder, teacher_dir(profile), profile.name)
    teacher_result = read_result(teacher_dir(profile))
    frame = results_frame(current_results(profile, ablation_grid(profile)))
    provenance_md = write_table(runs_table(frame), folder / "tables" / "runs")
    origin = _teacher_origin(teacher_dir(profile))
    tuning = adopt_committed_tuning(profile)
    confirmation = read_confirmation(tuning) if tuning else None
    runs = with_tuning_defaults(default_runs(frame), confirmation)
    lines = [*_header_section(profile), *_teacher_section(profile, teacher_result["miou"], origin),
             *_verdict_section(folder, runs, confirmation), *_students_section(folder),
             *_comparisons_section(folder, runs, teacher_result["miou"]),
             *_tuning_section(folder, runs, teacher_result["miou"], tuning, confirmation), *_distances_section(folder),
             *_position_section(folder, profile),
             *_benchmark_and_runs_section(folder, provenance_md, profile.data.dataset == "synthetic")]
    path = folder / "REPORT.md"
    path.write_text("\n".join(lines))
    markdown_to_html(path)  # REPORT.html beside it, figures embedded
    return path
