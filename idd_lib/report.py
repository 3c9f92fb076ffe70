"""Tables of the study: per-method mean ± std and 95% CI over seeds, paired tests, per-class IoU.

Every number is a last-iterate checkpoint evaluated single-scale on the validation split.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats


def results_frame(rows: Sequence[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise ValueError("no finished runs to summarise; run 02_distill/03_ablation first")
    frame["label"] = frame.apply(lambda r: r["method"] + (f" [{r['tag']}]" if r.get("tag") else ""), axis=1)
    return frame


def summarize(frame: pd.DataFrame, baseline: str = "baseline") -> pd.DataFrame:
    """One row per method label: seeds, mean, std, 95% CI half-width (t), paired t-test vs baseline."""
    rows = []
    base = frame[frame["label"] == baseline].set_index("seed")["miou"]
    for label, group in frame.groupby("label", sort=False):
        values = group["miou"].to_numpy(float)
        n = len(values)
        std = float(values.std(ddof=1)) if n > 1 else float("nan")
        ci = float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else float("nan")
        row = {"method": label, "seeds": n, "mean": values.mean(), "std": std, "ci95": ci,
               "mIoU": f"{values.mean():.2f} ± {std:.2f}" if n > 1 else f"{values.mean():.2f}"}
        paired = group.set_index("seed")["miou"].align(base, join="inner")
        if label != baseline and len(paired[0]) >= 2:
            delta = paired[0] - paired[1]
            row["delta_vs_baseline"] = float(delta.mean())
            row["p_vs_baseline"] = float(stats.ttest_rel(paired[0], paired[1]).pvalue) if delta.std() > 0 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def per_class_table(frame: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Mean per-class IoU per method (rows) and class (columns)."""
    ious = pd.DataFrame(frame["per_class_iou"].tolist(), columns=list(class_names))
    ious["method"] = frame["label"].to_numpy()
    return ious.groupby("method", sort=False).mean()


def highlight_changes(table: pd.DataFrame, baseline: str = "baseline", top: int = 3) -> pd.DataFrame:
    """Markdown-ready copy: the ``top`` largest per-class changes vs baseline of each row in bold."""
    text = table.map(lambda v: f"{v:.1f}")
    if baseline not in table.index:
        return text
    for method in table.index.drop(baseline):
        delta = table.loc[method] - table.loc[baseline]
        for cls in delta.abs().nlargest(top).index:
            text.loc[method, cls] = f"**{table.loc[method, cls]:.1f} ({delta[cls]:+.1f})**"
    return text


def write_table(frame: pd.DataFrame, stem: str | Path, index: bool = False) -> str:
    """CSV + Markdown next to each other; returns the Markdown."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=index)
    markdown = frame.to_markdown(index=index, floatfmt=".2f")
    stem.with_suffix(".md").write_text(markdown + "\n")
    return markdown


def _md_table(path: Path) -> str:
    return path.read_text().strip() if path.exists() else f"_missing: {path.name} (run the notebook that writes it)_"


def _figure(folder: Path, stem: str, caption: str) -> str:
    png = folder / "figures" / f"{stem}.png"
    if not png.exists():
        return f"_missing figure: {stem} (run the notebook that draws it)_"
    return f"![{caption}](figures/{stem}.png)\n\n{caption} ([PDF](figures/{stem}.pdf))"


def write_report(profile_name: str) -> Path:
    """Compose ``results/<profile>/REPORT.md`` from the runs, tables and figures on disk."""
    import datetime
    import json

    from .config import get_profile
    from .paths import profile_dir
    from .provenance import git_state
    from .runs import collect_results, teacher_dir

    profile = get_profile(profile_name)
    folder = profile_dir(profile.name)
    teacher_result = json.loads((teacher_dir(profile) / "result.json").read_text())
    frame = results_frame(collect_results(profile))
    provenance_rows = []
    for run in frame.itertuples():
        prov = json.loads((Path(run.run_dir) / "provenance.json").read_text())
        provenance_rows.append({"run": Path(run.run_dir).name, "seed": run.seed, "mIoU": run.miou,
                                "wall time (s)": run.wall_time_s, "device": prov["device"],
                                "commit": prov["git"]["commit"][:10] + ("+dirty" if prov["git"]["dirty"] else ""),
                                "torch": prov["versions"]["torch"]})
    provenance_md = write_table(pd.DataFrame(provenance_rows), folder / "tables" / "runs")
    git = git_state()
    student, teacher = profile.student, profile.teacher
    lines = [
        f"# IDD study: profile `{profile.name}`",
        "",
        f"{profile.description}. Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"from commit `{git['commit'][:10]}`{' (dirty tree)' if git['dirty'] else ''}.",
        "",
        "IDD and PID are implemented from the paper's abstract plus our reconstruction (METHOD.md in the "
        "project's docs); every option the paper does not fix is a configurable choice. Numbers are "
        "last-iterate checkpoints, single-scale whole-image validation mIoU, over seeds "
        f"{', '.join(map(str, profile.seeds))}.",
        "",
        "## Teacher",
        "",
        f"Teacher: ResNet {teacher.block} blocks {teacher.layers}, width x{teacher.width}, {teacher.head.upper()} "
        f"head ({teacher.head_channels} ch), {profile.teacher_train.iterations} iterations: "
        f"**val mIoU {teacher_result['miou']:.2f}**. Student: blocks {student.layers}, width x{student.width}, "
        f"{student.head.upper()} head ({student.head_channels} ch), {profile.student_train.iterations} iterations.",
        "",
        "## Students: validation mIoU (%)",
        "",
        "mean ± std over seeds; `ci95` = half-width of the 95% t-interval; `delta_vs_baseline` and "
        "`p_vs_baseline` = paired t-test on the same seeds.",
        "",
        _md_table(folder / "tables" / "methods.md"),
        "",
        _figure(folder, "miou", "Validation mIoU per method (error bars: seed std; dashed: teacher)."),
        "",
        "## Per-class IoU (%)",
        "",
        "Mean over seeds; in bold the three largest changes of each method against the baseline.",
        "",
        _md_table(folder / "tables" / "per_class_iou.md"),
        "",
        "## Inter-class distances",
        "",
        _figure(folder, "distance_heatmaps", "Class-centre distance matrices over the validation set "
                "(top, shared scale) and their differences to the teacher (bottom)."),
        "",
        "Agreement of each student's matrix with the teacher's (upper triangle; mean and std over seeds):",
        "",
        _md_table(folder / "tables" / "distance_agreement.md"),
        "",
        "## Feature space (t-SNE)",
        "",
        _figure(folder, "tsne", "t-SNE of the same class-balanced pixels in teacher and student feature spaces; "
                "stars: class centres."),
        "",
        "## The benchmark",
        "",
        _figure(folder, "synthetic_samples", "Samples of the embedded synthetic street scenes and their labels."),
        "",
        _figure(folder, "synthetic_knobs", "The knobs: position prior (rows) and appearance overlap (columns)."),
        "",
        "## Runs",
        "",
        provenance_md,
        "",
    ]
    path = folder / "REPORT.md"
    path.write_text("\n".join(lines))
    return path
