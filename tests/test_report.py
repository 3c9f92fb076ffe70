"""Statistics of the report on synthetic result rows, the per-run provenance table, REPORT.md."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from idd_lib import presets, report, runs

MEANS = {"baseline": 50.0, "kd": 51.0, "idd": 53.0, "idd+pid": 52.5}


def synthetic_rows(seeds=(0, 1, 2, 3, 4), spread=0.5, seed=0):
    """Result rows with known method means plus a shared per-seed effect (so pairing matters)."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 2.0, len(seeds))
    return [{"method": m, "seed": s, "miou": mean + shared[i] + rng.normal(0, spread), "tag": ""}
            for m, mean in MEANS.items() for i, s in enumerate(seeds)]


def test_mean_ci_matches_scipy_t_interval():
    values = [48.1, 50.3, 49.7, 51.2]
    mean, half = report.mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values)) and half == pytest.approx((high - low) / 2)
    assert np.isnan(report.mean_ci([3.0])[1])


def test_summarize_tests_against_baseline_and_the_best_other_method():
    frame = report.results_frame(synthetic_rows())
    summary = report.summarize(frame).set_index("method")
    by_seed = {m: g.set_index("seed")["miou"] for m, g in frame.groupby("method")}
    assert summary.loc["baseline", "best_other"] == "idd"
    assert summary.loc["kd", "best_other"] == "idd"
    assert summary.loc["idd", "best_other"] == "idd+pid"     # the best method is tested against the runner-up
    assert "delta_vs_baseline" not in summary or np.isnan(summary.loc["baseline", "delta_vs_baseline"])
    for method in ("kd", "idd", "idd+pid"):
        a, b = by_seed[method], by_seed["baseline"]
        assert summary.loc[method, "delta_vs_baseline"] == pytest.approx((a - b).mean())
        assert summary.loc[method, "p_vs_baseline"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
        best = by_seed[summary.loc[method, "best_other"]]
        assert summary.loc[method, "p_vs_best_other"] == pytest.approx(stats.ttest_rel(a, best).pvalue)
    # pairing removes the shared per-seed effect: the paired test sees idd > baseline clearly
    assert summary.loc["idd", "p_vs_baseline"] < stats.ttest_ind(by_seed["idd"], by_seed["baseline"]).pvalue
    half = stats.t.ppf(0.975, 4) * by_seed["kd"].std(ddof=1) / np.sqrt(5)
    assert summary.loc["kd", "ci95"] == pytest.approx(half) and summary.loc["kd", "seeds"] == 5


def test_summarize_lower_is_better_and_unpaired_seeds():
    rows = [{"method": m, "seed": s, "miou": v, "tag": ""}
            for m, vals in {"baseline": [0.3, 0.4, 0.35], "idd": [0.1, 0.15, 0.12]}.items()
            for s, v in zip((0, 1, 2), vals)]
    rows.append({"method": "kd", "seed": 7, "miou": 0.2, "tag": ""})   # no seed shared with the others
    summary = report.summarize(report.results_frame(rows), higher_is_better=False).set_index("method")
    assert summary.loc["baseline", "best_other"] == "idd"
    assert summary.loc["idd", "best_other"] == "kd" and np.isnan(summary.loc["idd", "p_vs_best_other"])
    assert np.isnan(summary.loc["kd", "p_vs_baseline"]) and np.isnan(summary.loc["kd", "std"])


def test_seed_table_leaves_the_reference_out_of_the_tests():
    frame = pd.DataFrame([{"network": "teacher", "seed": 0, "r2": 0.99}] +
                         [{"network": n, "seed": s, "r2": v + 0.01 * s}
                          for n, v in (("baseline", 0.8), ("pid", 0.9)) for s in (0, 1, 2)])
    table = report.seed_table(frame, ["r2"], "network", test="r2", reference="teacher").set_index("network")
    assert table.loc["pid", "r2"] == pytest.approx(0.91) and table.loc["pid", "seeds"] == 3
    assert table.loc["pid", "r2 best_other"] == "baseline" and table.loc["baseline", "r2 best_other"] == "pid"
    assert pd.isna(table.loc["teacher", "r2 best_other"])
    with pytest.raises(ValueError, match="one grouping column"):
        report.seed_table(frame, ["r2"], ["network", "seed"], test="r2")


def test_highlight_changes_bolds_the_largest_changes():
    table = pd.DataFrame({"a": [50.0, 51.0], "b": [40.0, 30.0], "c": [20.0, 20.5]}, index=["baseline", "idd"])
    text = report.highlight_changes(table, top=1)
    assert text.loc["idd", "b"].startswith("**30.0 (-10.0)") and not text.loc["idd", "a"].startswith("**")


def test_the_per_class_table_leads_with_the_teacher_unmarked():
    frame = pd.DataFrame({"label": ["baseline", "baseline", "idd"], "per_class_iou": [[10, 20], [30, 40], [50, 0]]})
    table = report.per_class_table(frame, ["pole", "car"], teacher=[70.0, 80.0])
    assert list(table.index) == ["teacher", "baseline", "idd"] and table.index.name == "method"
    assert table.loc["baseline"].tolist() == [20.0, 30.0] and table.loc["teacher"].tolist() == [70.0, 80.0]
    text = report.highlight_changes(table, top=1)
    assert not text.loc["teacher"].str.startswith("**").any() and text.loc["idd", "pole"].startswith("**")


def _fake_run(folder: Path, method: str, seed: int, miou: float, digest: str = "abc123def456") -> dict:
    folder.mkdir(parents=True)
    result = {"method": method, "seed": seed, "miou": miou, "per_class_iou": [miou] * 9, "tag": "",
              "class_names": [f"c{k}" for k in range(9)], "wall_time_s": 12.5, "config_digest": digest,
              "run_dir": str(folder)}
    (folder / "result.json").write_text(json.dumps(result))
    (folder / "provenance.json").write_text(json.dumps({
        "git": {"commit": "0123456789abcdef", "dirty": True}, "device": "cpu (test)",
        "versions": {"python": "3.11.0", "torch": "2.14.1"}}))
    return result


def test_runs_table_records_config_seed_commit_versions_device_and_time(tmp_path):
    frame = report.results_frame([_fake_run(tmp_path / "r", "idd", 2, 50.0)])
    row = report.runs_table(frame).iloc[0]
    assert row["config"] == "abc123def456" and row["seed"] == 2 and row["commit"] == "0123456789+dirty"
    assert row["versions"] == "python 3.11.0, torch 2.14.1" and row["device"] == "cpu (test)"
    assert row["wall time (s)"] == 12.5


def test_a_report_without_a_study_names_the_command_to_run(tiny_profile, monkeypatch, tmp_path):
    monkeypatch.setitem(presets.PROFILES, "tiny", tiny_profile)
    monkeypatch.setenv("IDD_RESULTS", str(tmp_path / "results"))
    with pytest.raises(report.ReportError, match="run 'make study PROFILE=tiny' first") as no_teacher:
        report.write_report("tiny")
    teacher = runs.teacher_dir(tiny_profile)
    teacher.mkdir(parents=True)
    (teacher / "result.json").write_text(json.dumps({"miou": 60.0}))
    with pytest.raises(report.ReportError, match="no runs/ folder.*make study PROFILE=tiny") as no_runs:
        report.write_report("tiny")
    assert "\n" not in str(no_teacher.value) + str(no_runs.value)


def test_report_embeds_every_figure_and_table(tiny_profile, monkeypatch, tmp_path):
    monkeypatch.setitem(presets.PROFILES, "tiny", tiny_profile)
    folder = tmp_path / "results"
    monkeypatch.setenv("IDD_RESULTS", str(folder))
    teacher = runs.teacher_dir(tiny_profile)
    teacher.mkdir(parents=True)
    (teacher / "result.json").write_text(json.dumps({"miou": 60.0}))
    for method, seed in (("baseline", 0), ("idd", 0)):
        digest = runs.student_config(tiny_profile, method, seed).digest()
        _fake_run(folder / "tiny" / "runs" / f"{method}-s{seed}", method, seed, 50.0, digest)
    _fake_run(folder / "tiny" / "runs" / "idd-s0-stale", "idd", 0, 99.0)        # an earlier config's run
    assert [r["method"] for r in report.current_results("tiny")] == ["baseline", "idd"]
    text = report.write_report("tiny").read_text()
    assert "idd-s0-stale" not in text and "99.00" not in text
    figures = ("miou", "distance_heatmaps", "agreement_curves", "tsne", "position_probe", "position_sweep",
               "synthetic_samples", "synthetic_knobs")
    tables = ("methods", "per_class_iou", "distance_agreement", "tsne_timing", "position_probe", "position_sweep")
    for stem in figures:
        assert f"_missing figure: {stem} " in text
    for stem in tables:
        assert f"_missing: {stem}.md" in text
    for stem in figures:
        for suffix in (".png", ".pdf"):
            (folder / "tiny" / "figures").mkdir(parents=True, exist_ok=True)
            (folder / "tiny" / "figures" / f"{stem}{suffix}").write_bytes(b"x")
    for stem in tables:
        report.write_table(pd.DataFrame({"x": [1]}), folder / "tiny" / "tables" / stem)
    text = report.write_report("tiny").read_text()
    assert "_missing" not in text
    for stem in figures:
        assert f"(figures/{stem}.png)" in text and f"(figures/{stem}.pdf)" in text
    assert "0123456789+dirty" in text and "**Position-prior sweep.**" in text
    page = (folder / "tiny" / "REPORT.html").read_text()  # self-contained: every figure embedded
    assert page.count("data:image/png;base64,") == len(figures) and 'src="figures/' not in page
    assert (folder / "tiny" / "tables" / "methods.tex").is_file()


def test_report_verdict_comparisons_and_tuned_sections(tiny_profile, monkeypatch, tmp_path):
    """Five seeds of four methods, a tuning folder and 07's per-seed tables: every new section is filled."""
    tiny_profile = dataclasses.replace(tiny_profile, seeds=(0, 1, 2, 3, 4))   # the study's grid
    monkeypatch.setitem(presets.PROFILES, "tiny", tiny_profile)
    folder = tmp_path / "results"
    monkeypatch.setenv("IDD_RESULTS", str(folder))
    teacher = runs.teacher_dir(tiny_profile)
    teacher.mkdir(parents=True)
    (teacher / "result.json").write_text(json.dumps({"miou": 60.0}))
    rows = synthetic_rows()
    for row in rows:
        digest = runs.student_config(tiny_profile, row["method"], row["seed"]).digest()
        run = folder / "tiny" / "runs" / f"{row['method']}-s{row['seed']}"
        _fake_run(run, row["method"], row["seed"], row["miou"], digest)
        result = json.loads((run / "result.json").read_text())
        result.update({"tune_miou": row["miou"] - 1, "agreement/pearson": 0.9 + 0.01 * (row["method"] == "idd")
                       + 0.001 * row["seed"] * (row["method"] == "kd")})
        (run / "result.json").write_text(json.dumps(result))
    by_hand = runs.student_config(tiny_profile, "kd", 5).digest()   # a run outside the study's grid (seeds 0-4)
    _fake_run(folder / "tiny" / "runs" / "kd-s5", "kd", 5, 99.0, by_hand)
    tuning = folder / "tiny" / "tuning"
    tuning.mkdir(parents=True)
    confirmation = pd.DataFrame([{"method": r["method"], "setting": setting, "tag": "" if setting == "default" else "w=2",
                                  "seed": r["seed"], "miou": r["miou"] + (1.0 if setting == "tuned" else 0),
                                  "tune_miou": r["miou"], "pearson": 0.9}
                                 for r in rows if r["method"] != "baseline" for setting in ("default", "tuned")])
    # a method the study does not run, tuned only: far above idd+pid on tune and val
    rival = confirmation[confirmation["method"] == "idd+pid"].assign(method="cwd", miou=lambda f: f["miou"] + 10 + 0.5 * (f["seed"] % 2),
                                                                    tune_miou=lambda f: f["tune_miou"] + 10)
    confirmation = pd.concat([confirmation, rival], ignore_index=True)
    confirmation.to_csv(tuning / "confirmation.csv", index=False)
    (tuning / "tuning.json").write_text(json.dumps({"trials": 6, "tune_seeds": [0, 1], "seeds": [0, 1, 2, 3, 4],
                                                    "command": "python -m idd_lib.tuning --profile tiny",
                                                    "commit": "abcdef1234567", "tuning_runs": 36,
                                                    "confirmation_runs": 30, "distinct_runs": 59,
                                                    "runs_trained": 41, "wall_time_s": 7200}))
    text = report.write_report("tiny").read_text()
    verdict = pd.read_csv(folder / "tiny" / "tables" / "verdict.csv").set_index(["setting", "claim"])
    assert verdict.loc[("default", "a"), "reading"] == "supported"              # idd 2 points above kd on 5 seeds
    assert verdict.loc[("default", "c"), "reading"] == "missing"                # 07 has not written its tables
    assert verdict.loc[("tuned", "a"), "n"] == 5
    for setting in ("default", "tuned"):  # the strongest competitor is the tuning's cwd, in both settings
        assert "idd+pid − cwd" in verdict.loc[(setting, "e"), "evidence"]
        assert verdict.loc[(setting, "e"), "reading"] == "not supported"
    assert "## Verdict" in text and "## Comparisons" in text and "python -m idd_lib.tuning --profile tiny" in text
    assert "59 runs (41 trained by the command, the others finished before), 2.0 h" in text
    comparisons = pd.read_csv(folder / "tiny" / "tables" / "comparisons.csv")
    assert 5 not in set(pd.read_csv(folder / "tiny" / "tables" / "runs.csv")["seed"])
    assert set(comparisons["family"]) == {"vs baseline", "idd vs others"} and comparisons["n"].eq(5).all()
    assert (comparisons["method"] == "cwd").sum() == 1 and (comparisons["reference"] == "cwd").sum() == 1
    tuned = pd.read_csv(folder / "tiny" / "tables" / "tuned_methods.csv").set_index("method")
    assert tuned.loc["idd", "tuned setting"] == "w=2" and "(n 5)" in tuned.loc["idd", "tuned mIoU"]


def test_a_tuned_methods_default_with_base_options_is_named_as_the_variant():
    confirmation = pd.DataFrame({"method": ["cirkd", "cirkd", "kd", "kd"], "setting": ["default", "tuned"] * 2,
                                 "tag": ["cirkd.contrast_sample=total", "cirkd=2,cirkd.contrast_sample=total",
                                         float("nan"), "kd=2"], "seed": 0, "miou": 1.0})
    assert list(report.default_labels(confirmation)) == ["cirkd [cirkd.contrast_sample=total]"] * 2 + ["kd", "kd"]
