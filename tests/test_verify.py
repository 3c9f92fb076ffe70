"""The reproduction check on small result folders written with the project's own run-folder writers:
a reference written from a folder agrees with it exactly; a changed reference number, a lost claim
or a changed sign is reported (exit 1), a reading that flips to its neighbour on noise is not;
missing results and damaged references are one-line errors (exit 2)."""
import dataclasses
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from idd_lib import paths, presets, report, rundir, runs, teachers, verify

ROOT = Path(__file__).resolve().parents[1]
MEANS = {"baseline": 45.0, "kd": 47.0, "idd": 50.5, "idd+pid": 50.0}
CLASSES = ("road", "car", "pole")


@pytest.fixture
def profile(tiny_profile, monkeypatch):
    study = dataclasses.replace(tiny_profile, seeds=(0, 1, 2))   # the study's grid: its methods x these seeds
    monkeypatch.setitem(presets.PROFILES, "tiny", study)
    return study


def write_run(profile, method: str, seed: int, miou: float, rng) -> None:
    """One finished run folder as the engine leaves it: result.json and provenance.json."""
    cfg = runs.student_config(profile, method, seed, check=False)
    folder = runs.run_dir(profile, cfg)
    rundir.make_folder(folder)
    per_class = [miou + float(d) for d in rng.normal(0, 3, len(CLASSES))]
    rundir.write_result(folder, {
        "method": method, "seed": seed, "steps": 4, "miou": miou, "per_class_iou": per_class,
        "class_names": list(CLASSES), "wall_time_s": 10.0 + seed, "config_digest": cfg.digest(), "tag": "",
        "weights_override": {}, "options": {}, "agreement/pearson": 0.9 + miou / 1000 + float(rng.normal(0, 1e-3)),
        "agreement/spearman": 0.8, "agreement/frobenius_rel": 0.1})
    rundir.update_provenance(folder, git={"commit": "0123456789abcdef", "dirty": False},
                             machine={"cpu": "Test CPU", "threads": 2, "torch": "2.14.1"})


def write_study(profile, means=MEANS, seeds=(0, 1, 2), seed=0) -> None:
    """Runs with known method means plus a shared per-seed effect, and a position probe table."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 0.5, len(seeds))
    for method, mean in means.items():
        for i, s in enumerate(seeds):
            write_run(profile, method, s, mean + float(shared[i]) + float(rng.normal(0, 0.2)), rng)
    teacher = runs.teacher_dir(profile)
    rundir.make_folder(teacher)
    rundir.write_result(teacher, {"method": "baseline", "seed": 0, "miou": 60.0, "wall_time_s": 30.0,
                                  "config_digest": profile.teacher_config().digest()})
    rundir.update_provenance(teacher, source={"artifact": "idd_lib/teachers/tiny"})
    (teacher / rundir.MODEL).write_bytes(b"the teacher's weights")
    probe = pd.DataFrame([{"network": "teacher", "seed": 0, "mean": 0.87}] +
                         [{"network": m, "seed": s, "mean": 0.8 + 0.01 * k + 0.001 * s}
                          for k, m in enumerate(means) for s in seeds])
    report.write_table(report.seed_table(probe, ["mean"], "network", test="mean", reference="teacher"),
                       paths.profile_dir("tiny") / "tables" / "position_probe")


def check(tmp_path, capsys) -> tuple[int, str]:
    code = verify.main(["--profile", "tiny", "--reference-root", str(tmp_path / "reference")])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def runs_csv(tmp_path):
    return tmp_path / "reference" / "tiny" / verify.RUNS


def edit_reference(tmp_path, edit) -> None:
    table = pd.read_csv(runs_csv(tmp_path))
    edit(table)
    table.to_csv(runs_csv(tmp_path), index=False)


def test_a_reference_written_from_a_folder_verifies_it_exactly(profile, tmp_path, capsys):
    write_study(profile)
    assert verify.main(["--write-reference", "--profile", "tiny", "--reference-root", str(tmp_path / "reference")]) == 0
    reference = tmp_path / "reference" / "tiny"
    table = pd.read_csv(reference / verify.RUNS)
    assert len(table) == 12 and {"iou/pole", "agreement/pearson", "config_digest"} <= set(table)
    machine = rundir.read_json(reference / verify.MACHINE, "")
    assert machine["machine"] == {"cpu": "Test CPU", "threads": 2, "torch": "2.14.1"}
    assert machine["commit"] == "0123456789abcdef" and machine["runs"] == 12 and machine["runs_wall_time_s"] == 132.0
    assert (reference / "tables" / "position_probe.csv").is_file()
    code, out = check(tmp_path, capsys)
    assert code == 0, out
    text, passed = verify.verify("tiny", tmp_path / "reference")
    assert passed and text.count("| exact ") == 4 + 4 + 5  # mIoU, agreement, probe (teacher too)
    assert "Same CPU type, thread count and torch build: expect 'exact'." in text and "Reproduced." in text
    assert "TOST" in text and "## Conclusions: the verdict's claims" in text
    claims = text.split("## Conclusions")[1]
    assert "| a " in claims and "holds" in claims and "FAILS" not in claims
    digest = profile.teacher_config().digest()
    assert (f"teacher: reference {digest} val mIoU 60.00 (shipped); yours {digest} val mIoU 60.00 (shipped); "
            "the same weights") in text
    sha = teachers.file_sha256(runs.teacher_dir(profile) / rundir.MODEL)
    assert machine["teacher"] == {"config_digest": digest, "miou": 60.0, "wall_time_s": 30.0, "source": "shipped",
                                  "model_sha256": sha}
    machine["machine"]["threads"] = 4
    rundir.atomic_write_text(reference / verify.MACHINE, json.dumps(machine))
    assert "Another CPU type, thread count or torch build: expect 'agree'" in verify.verify("tiny", reference.parent)[0]
    (runs.teacher_dir(profile) / rundir.MODEL).write_bytes(b"a teacher trained elsewhere")
    assert "OTHER weights: your students learn from another teacher" in verify.verify("tiny", tmp_path / "reference")[0]


def test_the_reference_holds_the_study_and_carries_the_tuning_results(profile, tmp_path):
    write_study(profile)
    tuned = paths.profile_dir("tiny") / "tuning"
    tuned.mkdir()
    (tuned / "tuning.json").write_text('{"methods": ["kd"]}')
    (tuned / "confirmation.csv").write_text("method,seed,miou\nkd,0,50.0\n")
    write_run(profile, "cwd", 0, 70.0, np.random.default_rng(0))  # a wider ablation's method in the same folder
    write_run(profile, "kd", 7, 70.0, np.random.default_rng(0))
    tuned_run = runs.run_dir(profile, runs.student_config(profile, "kd", 7, check=False))
    rundir.write_result(tuned_run, {**rundir.read_result(tuned_run), "tag": "kd=2"})  # a tuning trial
    reference = verify.write_reference("tiny", tmp_path / "reference")
    table = pd.read_csv(reference / verify.RUNS)
    assert len(table) == 12 and "cwd" not in set(table["method"]) and 7 not in set(table["seed"])
    assert (reference / "tuning" / "confirmation.csv").read_text() == "method,seed,miou\nkd,0,50.0\n"
    shutil.rmtree(tuned)  # a study without its own tuning (or with an adopted copy) keeps the committed one
    tuned.mkdir()
    (tuned / "tuning.json").write_text('{"methods": ["idd"], "source": "committed with the project"}')
    verify.write_reference("tiny", tmp_path / "reference")
    assert (reference / "tuning" / "tuning.json").read_text() == '{"methods": ["kd"]}'


def test_a_changed_reference_number_is_reported_and_exits_nonzero(profile, tmp_path, capsys):
    write_study(profile)
    verify.write_reference("tiny", tmp_path / "reference")

    def last_digit(table):  # one class of one run, in its last digit: no longer exact, still within the spread
        table.loc[0, "iou/car"] = np.nextafter(table.loc[0, "iou/car"], np.inf)
    edit_reference(tmp_path, last_digit)
    code, out = check(tmp_path, capsys)
    assert code == 0 and f"| {table_method(tmp_path)}" in out
    rows = verify.compare_runs(pd.read_csv(runs_csv(tmp_path)),
                               verify.runs_table(verify._current(profile)), "miou", ["miou", "iou/car"])
    assert rows.set_index("method").loc[table_method(tmp_path), "verdict"] == "agree"

    def kd_higher(table):
        table.loc[table["method"] == "kd", "miou"] += 3.0
    edit_reference(tmp_path, kd_higher)
    code, out = check(tmp_path, capsys)
    assert code == 1 and "NOT reproduced" in out
    row = next(line for line in out.splitlines() if line.startswith("| kd "))
    assert "differs" in row


def table_method(tmp_path) -> str:
    return pd.read_csv(runs_csv(tmp_path)).loc[0, "method"]


def test_a_sign_change_and_a_lost_claim_are_detected(profile, tmp_path, capsys):
    write_study(profile)
    verify.write_reference("tiny", tmp_path / "reference")
    def kd_below_baseline(table):  # the reference now says kd is clearly below the baseline, on every seed
        baseline = table[table["method"] == "baseline"].set_index("seed")["miou"]
        kd = table["method"] == "kd"
        table.loc[kd, "miou"] = table.loc[kd, "seed"].map(baseline) - 3 + 0.1 * table.loc[kd, "seed"]
    edit_reference(tmp_path, kd_below_baseline)
    ref = pd.read_csv(runs_csv(tmp_path))
    mine = verify.runs_table(verify._current(profile))
    signs = verify.signs(ref, mine).set_index("method")
    assert signs.loc["kd", "sign"] == "changes" and signs.loc["kd", "fails"]
    assert signs.loc["idd", "sign"] == "holds" and not signs.loc["idd", "fails"]
    code, out = check(tmp_path, capsys)
    assert code == 1 and "FAILS" in out and "kd vs baseline (sign)" in out
    assert "claim a (default)" in out.splitlines()[-1]  # idd - kd: +6.5 in the reference, +3.5 here


def verdict_row(a: list[float], b: list[float], reading: str | None = None, claim: str = "a") -> dict:
    """A verdict row of the claim with ``a - b`` as its evidence (its reading as the verdict gives it,
    unless ``reading`` overrides it)."""
    from idd_lib import verdict
    runs = pd.DataFrame([{"method": m, "seed": s, "miou": v, "tune_miou": v, "pearson": 0.9}
                         for m, vs in (("idd", a), ("kd", b)) for s, v in enumerate(vs)])
    row = verdict.verdict_table(runs).set_index("claim").loc[claim].iloc[0].to_dict()
    return {**row, "claim": claim, **({"reading": reading} if reading else {})}


def test_a_claim_holds_flips_to_its_neighbour_or_fails_by_its_effect():
    ref = verdict_row([52.0, 52.6, 51.1, 52.9, 51.8], [50.0, 50.2, 49.6, 50.4, 50.1])
    assert ref["reading"] == "supported"
    same = verdict_row([52.1, 52.5, 51.3, 52.6, 51.6], [50.0, 50.2, 49.7, 50.3, 50.2])
    assert verify._claim_check(ref, same)["check"] == "holds"
    assert verify._claim_check(ref, {**same, "reading": "inconclusive"})["check"] == "borderline"
    assert verify._claim_check(ref, {**same, "reading": "not supported"})["check"] == "FAILS"
    lost = verdict_row([50.1, 50.0, 49.9, 50.5, 50.0], [50.0, 50.2, 49.6, 50.4, 50.1])  # IDD's lead removed
    check = verify._claim_check(ref, lost)
    assert check["verdict"] == "differs" and check["check"] == "FAILS"
    assert abs(check["difference"]) + check["90% CI half-width"] > check["margin"]


def test_every_decided_claim_is_compared_and_one_missing_in_yours_fails():
    ref = pd.DataFrame([verdict_row([52.0, 52.6, 51.1, 52.9, 51.8], [50.0, 50.2, 49.6, 50.4, 50.1]),
                        {"claim": "c", "setting": "default", "evidence": "missing: no probe", "reading": "missing"}])
    mine = pd.DataFrame([{**ref.iloc[0].to_dict(), "reading": "missing"}])
    table = verify.compare_conclusions(ref, mine)
    assert list(table["claim"]) == ["a"] and table.loc[0, "check"] == "FAILS" and table.loc[0, "yours"] == "missing"


def test_a_missing_method_or_seed_is_named(profile, tmp_path, capsys):
    write_study(profile)
    verify.write_reference("tiny", tmp_path / "reference")
    kd = runs.run_dir(profile, runs.student_config(profile, "kd", 2, check=False))
    (kd / rundir.RESULT).unlink()
    def add_cwd_and_change_a_config(table):
        table.loc[len(table)] = {**table.iloc[0].to_dict(), "method": "cwd"}
        table.loc[(table["method"] == "idd") & (table["seed"] == 1), "config_digest"] = "feedfacecafe"
    edit_reference(tmp_path, add_cwd_and_change_a_config)
    code, out = check(tmp_path, capsys)
    assert code == 1
    assert "another config (seed 1: " in next(line for line in out.splitlines() if line.startswith("| idd "))
    assert "missing seeds 2" in next(line for line in out.splitlines() if line.startswith("| kd "))
    assert "missing: no run of this method" in next(line for line in out.splitlines() if line.startswith("| cwd "))


def test_missing_results_and_damaged_references_are_one_line_errors(profile, tmp_path, capsys):
    code, out = check(tmp_path, capsys)
    assert code == 2 and out.count("\n") == 1 and "no study results here" in out
    write_study(profile)
    code, out = check(tmp_path, capsys)
    assert code == 2 and out.count("\n") == 1 and "no reference results" in out
    reference = verify.write_reference("tiny", tmp_path / "reference")
    damages = {
        verify.RUNS: (b"method,seed\n\x00\xff\xfe,\n", r"runs\.csv: (damaged CSV|no column)"),
        verify.MACHINE: (b"{not json", r"machine\.json: damaged JSON"),
    }
    for name, (content, message) in damages.items():
        good = (reference / name).read_bytes()
        (reference / name).write_bytes(content)
        code, out = check(tmp_path, capsys)
        assert code == 2 and out.count("\n") == 1 and re.search(message, out), out
        (reference / name).write_bytes(good)
    def words(table):
        table["miou"] = "high"
    edit_reference(tmp_path, words)
    code, out = check(tmp_path, capsys)
    assert code == 2 and "column miou holds something else than numbers" in out and out.count("\n") == 1


def test_numbers_read_back_from_a_reference_are_the_numbers_written(tmp_path):
    values = np.random.default_rng(0).normal(50, 20, 10000)
    pd.DataFrame({"method": "m", "seed": 0, "config_digest": "d", "miou": values}).to_csv(tmp_path / "r.csv", index=False)
    assert (verify._read_csv(tmp_path / "r.csv", verify.KEYS, ("miou",))["miou"].to_numpy() == values).all()


def test_the_equivalence_bound_is_scipys_90_percent_interval_and_one_value_is_undetermined():
    a, b = np.array([45.1, 46.0, 44.7]), np.array([45.9, 47.2, 46.1, 45.5])
    delta, half, margin = verify.welch((a.mean(), a.std(ddof=1), 3), (b.mean(), b.std(ddof=1), 4))
    low, high = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.90)
    assert delta == pytest.approx(b.mean() - a.mean()) and half == pytest.approx((high - low) / 2)
    assert margin == pytest.approx(verify.TOLERANCE * math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))
    # the TOST of statsmodels at that margin agrees with "the interval lies inside the margin"
    from statsmodels.stats.weightstats import ttost_ind
    inside = abs(delta) + half < margin
    assert (ttost_ind(b, a, -margin, margin, usevar="unequal")[0] < 0.05) == inside
    assert verify._judged((1.0, math.nan, 1), (1.1, 0.2, 3), exact=False)["verdict"] == "undetermined"
    assert verify._judged((1.0, 0.0, 3), (1.0, 0.0, 3), exact=False)["verdict"] == "differs"  # no spread: no margin
    assert verify._judged((50.0, 1.0, 5), (51.0, 1.0, 5), exact=False)["verdict"] == "agree"
    assert verify._judged((50.0, 1.0, 5), (53.0, 1.0, 5), exact=False)["verdict"] == "differs"


def test_the_reference_is_not_ignored_by_git():
    if not (shutil.which("git") and (ROOT / ".git").exists()):
        pytest.skip("not a git checkout")
    paths = [f"reference/default/{name}" for name in (verify.RUNS, verify.MACHINE, "tables/position_probe.csv")]
    assert subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True).stdout == ""


@pytest.mark.slow
def test_the_quick_study_verifies_exactly_against_its_own_reference(quick_study, tmp_path, capsys):
    root = tmp_path / "reference"
    assert verify.main(["--write-reference", "--profile", "quick", "--reference-root", str(root)]) == 0
    assert verify.main(["--profile", "quick", "--reference-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "| exact " in out and "differs" not in out and "Reproduced." in out
    machine = json.loads((root / "quick" / verify.MACHINE).read_text())
    assert machine["machine"]["threads"] >= 1 and machine["teacher"]["source"] == "trained"
    assert machine["study_wall_time_s"] > 0 and {"01_teacher", "03_ablation"} <= set(machine["notebooks_s"])
    runs_csv = pd.read_csv(root / "quick" / verify.RUNS)
    assert len(runs_csv) == len(presets.get_profile("quick").methods) and "iou/car" in runs_csv


def test_no_committed_result_file_stores_an_absolute_path():
    """Result files store paths relative to the results root, so a moved or cloned folder reads the same."""
    if not (shutil.which("git") and (ROOT / ".git").exists()):
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "reference", "benchmarks/results"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    absolute = re.compile(r"""(^|[\s,"'=:])/(work|home|tmp|root|Users|mnt|scratch)/""")
    found = [f"{name}:{k + 1}" for name in files if (ROOT / name).suffix in (".csv", ".json", ".md")
             for k, line in enumerate((ROOT / name).read_text().splitlines()) if absolute.search(line)]
    assert not found, found[:5]
