"""Equal tuning budget (idd_lib/tuning.py): search spaces, the grid, selection on tune only, the CLI."""
import json
from collections.abc import Mapping

import pandas as pd
import pytest

from idd_lib import study, tuning
from idd_lib.config import LossConfig
from idd_lib.losses import METHODS, TERM_BUILDERS, TERM_SEARCH
from idd_lib.presets import get_profile


def test_every_distillation_term_declares_a_space_centred_on_its_default():
    for term in TERM_BUILDERS:
        space = TERM_SEARCH[term]
        if term == "ce":
            assert space is None
            continue
        factors = space.weight_factors
        assert 1.0 in factors and all(abs(a * b - 1) < 1e-12 for a, b in zip(factors, reversed(factors)))  # log-symmetric
        if space.option:
            group, name = space.option.split(".")[1:]
            default = getattr(getattr(LossConfig(), group), name)
            values = space.values
            assert values[len(values) // 2] == default and values[0] * values[-1] == pytest.approx(default ** 2)


@pytest.mark.parametrize("method", ["kd", "idd+pid", "cwd-cirkd", "cirkd"])
def test_settings_are_equal_in_number_distinct_seeded_and_start_with_the_default(method):
    first = tuning.settings(method, 6, sampler_seed=0)
    assert len(first) == 6 and first[0] == {"weights": "", "options": "", "tag": ""}
    assert len({(s["weights"], s["options"]) for s in first}) == 6
    assert tuning.settings(method, 6, sampler_seed=0) == first
    assert tuning.settings(method, 6, sampler_seed=1) != first


def test_weights_lie_on_the_log_grid_of_the_method_default():
    axes = dict(tuning.dimensions("idd"))
    assert axes["weight:idd"] == tuple(5.0 * f for f in TERM_SEARCH["idd"].weight_factors)
    assert axes["loss.kd.temperature"] == (0.5, 1.0, 2.0)
    assert "weight:ce" not in axes


def test_tuning_grid_has_the_ablation_grid_form_and_an_equal_budget():
    profile = get_profile("quick")
    grid = tuning.tuning_grid(profile, ["kd", "idd", "cwd-feat"], trials=4, tune_seeds=(0, 1))
    assert all(set(run) == {"method", "seed", "weights", "options", "tag"} for run in grid)
    assert set(study.ablation_grid(profile, "kd", "0")[0]) == set(grid[0])
    counts = pd.DataFrame(grid).groupby("method").size()
    assert set(counts) == {8}


class TuneOnly(Mapping):
    """A run's result that fails the test if anything reads a validation number."""

    def __init__(self, data):
        self.data = data

    def __getitem__(self, key):
        if key in ("miou", "per_class_iou", "pearson"):
            raise AssertionError(f"selection read the validation value {key!r}")
        return self.data[key]

    def __iter__(self):
        return iter(k for k in self.data if k not in ("miou", "per_class_iou", "pearson"))

    def __len__(self):
        return len(list(iter(self)))


def _trial(method, tag, seed, tune, val):
    weights = "" if not tag else tag
    return TuneOnly({"method": method, "weights": weights, "options": "", "tag": tag, "seed": seed,
                     "tune_miou": tune, "miou": val})


def test_selection_uses_tune_means_and_never_reads_val():
    trials = [_trial("kd", "", 0, 40.0, 90.0), _trial("kd", "", 1, 42.0, 90.0),
              _trial("kd", "kd=2", 0, 45.0, 10.0), _trial("kd", "kd=2", 1, 44.0, 10.0),
              _trial("kd", "kd=4", 0, 50.0, 10.0), _trial("kd", "kd=4", 1, 30.0, 95.0),   # mean 40: not best
              _trial("idd", "", 0, 48.0, 1.0), _trial("idd", "", 1, 48.0, 1.0),
              _trial("idd", "idd=10", 0, 47.0, 99.0), _trial("idd", "idd=10", 1, 48.0, 99.0)]
    best = tuning.select_best(trials).set_index("method")
    assert best.loc["kd", "tag"] == "kd=2" and best.loc["kd", "tune_miou"] == pytest.approx(44.5)
    assert best.loc["kd", "default_tune_miou"] == pytest.approx(41.0)
    assert best.loc["idd", "tag"] == ""                     # the default stays when nothing beats it on tune
    assert best.loc["idd", "seeds"] == 2


def test_a_setting_with_a_diverged_seed_is_a_failed_trial_never_selected():
    nan = float("nan")
    trials = [{"method": "bpkd", "weights": w, "options": "", "tag": w, "seed": s, "tune_miou": v, "diverged": d}
              for w, s, v, d in (("", 0, 40.0, False), ("", 1, 42.0, False), ("bpkd=8", 0, 60.0, False),
                                 ("bpkd=8", 1, nan, True), ("bpkd=2", 0, 43.0, False), ("bpkd=2", 1, 44.0, False))]
    best = tuning.select_best(trials).set_index("method")
    assert best.loc["bpkd", "tag"] == "bpkd=2" and best.loc["bpkd", "default_tune_miou"] == pytest.approx(41.0)
    every = [{**t, "tune_miou": nan, "diverged": True} for t in trials]
    with pytest.raises(ValueError, match=r"every setting of \['bpkd'\] diverged"):
        tuning.select_best(every)
    table = pd.DataFrame([{"run": "a", "state": "failed", "error": "FloatingPointError: step 3: loss term 'ce' is nan"},
                          {"run": "b", "state": "failed", "error": "RuntimeError: out of memory"},
                          {"run": "c", "state": "done", "error": ""}])
    assert tuning.diverged_runs(table) == {"a"}          # a crash stays an error of the grid


def test_a_diverged_trial_reads_back_as_a_number_missing_and_the_default_as_an_empty_tag(tmp_path):
    trials = pd.DataFrame([{"method": "bpkd", "seed": 0, "weights": "", "options": "", "tag": "", "tune_miou": 40.5,
                            "run_dir": "default/runs/a", "diverged": False},
                           {"method": "bpkd", "seed": 0, "weights": "bpkd=8", "options": "", "tag": "bpkd=8",
                            "tune_miou": float("nan"), "run_dir": "default/runs/b", "diverged": True}])
    trials.to_csv(tmp_path / "trials.csv", index=False)
    back = tuning.read_settings(tmp_path / "trials.csv")
    assert back["tune_miou"].dtype.kind == "f" and back["tune_miou"].isna().tolist() == [False, True]
    assert back["tag"].tolist() == ["", "bpkd=8"] and back["weights"].tolist() == ["", "bpkd=8"]
    assert back.groupby("tag")["tune_miou"].mean().loc[""] == pytest.approx(40.5)   # what the tuning figure does


def test_selection_refuses_runs_without_tune_numbers():
    with pytest.raises(ValueError, match="tune_miou"):
        tuning.select_best([{"method": "kd", "weights": "", "options": "", "tag": "", "seed": 0,
                             "tune_miou": float("nan")}])


def test_confirmation_runs_default_and_best_with_every_seed():
    best = pd.DataFrame([{"method": "kd", "weights": "kd=2", "options": "", "tag": "kd=2"},
                         {"method": "idd", "weights": "", "options": "", "tag": ""}]).assign(default_options="",
                                                                                            default_tag="")
    grid = tuning.confirmation_grid(get_profile("quick"), best, seeds=(0, 1, 2, 3, 4))
    frame = pd.DataFrame(grid)
    assert len(frame[frame["method"] == "kd"]) == 10 and len(frame[frame["method"] == "idd"]) == 5
    assert sorted(frame[frame["tag"] == "kd=2"]["seed"]) == [0, 1, 2, 3, 4]


def test_method_options_are_carried_by_every_setting_the_default_included():
    base = tuning.parse_method_options(" cirkd-mem: loss.cirkd.contrast_sample=total ;")
    assert base == {"cirkd-mem": {"loss.cirkd.contrast_sample": "total"}}
    grid = tuning.tuning_grid(get_profile("quick"), ["cirkd-mem", "kd"], trials=3, tune_seeds=(0,), method_options=base)
    mine = [run for run in grid if run["method"] == "cirkd-mem"]
    assert len(mine) == 3 and all("loss.cirkd.contrast_sample=total" in run["options"] for run in mine)
    assert mine[0]["weights"] == "" and mine[0]["tag"] == "cirkd.contrast_sample=total"
    assert [run["tag"] for run in grid if run["method"] == "kd"][0] == ""   # other methods keep their defaults
    trials = [{**run, "tune_miou": 50.0 - index} for index, run in enumerate(grid)]   # the default wins
    best = tuning.select_best(trials).set_index("method")
    assert best.loc["cirkd-mem", "default_tag"] == best.loc["cirkd-mem", "tag"] == "cirkd.contrast_sample=total"
    confirm = tuning.confirmation_grid(get_profile("quick"), best.reset_index(), seeds=(0, 1))
    assert [run["options"] for run in confirm if run["method"] == "cirkd-mem"] == ["loss.cirkd.contrast_sample=total"] * 2
    with pytest.raises(ValueError, match=r"\['cirkd-mem'\] not among the methods tuned"):
        tuning.tuning_grid(get_profile("quick"), ["kd"], method_options=base)
    for bad in ("cirkd-mem", "nope:loss.cirkd.contrast_sample=total", "cirkd:contrast_sample"):
        with pytest.raises(ValueError, match="method-options"):
            tuning.parse_method_options(bad)


def test_cli_errors_are_one_line(capsys):
    assert tuning.main(["--profile", "quick", "--methods", "nope"]) == 1
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert tuning.main(["--profile", "quick", "--methods", "kd", "--seeds", "a"]) == 1
    assert "seeds: expected comma-separated integers" in capsys.readouterr().err
    assert tuning.main(["--profile", "quick", "--methods", "kd", "--method-options", "cirkd:loss.cirkd.temperature=1"]) == 1
    assert "['cirkd'] not among the methods tuned" in capsys.readouterr().err


@pytest.mark.slow
def test_tuning_end_to_end_on_the_quick_profile(tmp_path, monkeypatch):
    """The CLI at the quick profile with tiny schedules: trials on tune, selection, confirmation on val;
    then its results committed as a reference and adopted by a study without its own."""
    options = "train.iterations=2,teacher_train.iterations=2,train.eval_every=0"
    code = tuning.main(["--profile", "quick", "--options", options, "--methods", "kd",
                        "--trials", "2", "--tune-seeds", "0", "--seeds", "0,1,2"])
    assert code == 0
    from idd_lib.paths import profile_dir
    folder = profile_dir("quick") / "tuning"
    record = json.loads((folder / "tuning.json").read_text())
    assert record["trials"] == 2 and record["tuning_runs"] == 2 and record["default_setting_included"]
    assert record["command"].startswith("python -m idd_lib.tuning") and record["wall_time_s"] > 0
    tuned_elsewhere = pd.read_csv(folder / "selection.csv")["tag"].notna().all()
    # 2 trials on seed 0; the default again on seeds 0 (the same run), 1 and 2, the best one on 0-2, the baseline on 0-2
    assert record["runs_trained"] == record["distinct_runs"] == 7 + 2 * tuned_elsewhere
    trials = pd.read_csv(folder / "trials.csv")
    assert "miou" not in trials and trials["tune_miou"].notna().all() and len(trials) == 2
    confirmation = pd.read_csv(folder / "confirmation.csv")
    assert set(confirmation["setting"]) == {"default", "tuned"} and confirmation["miou"].notna().all()
    assert sorted(confirmation.loc[confirmation["method"] == "baseline", "seed"]) == [0, 1, 2]
    assert (confirmation["fresh"] == (confirmation["seed"] != 0)).all()          # seed 0 selected: not fresh
    assert set(tuning.tuned_rows(confirmation)["seed"]) == {1, 2}
    # the confirmation extended by one seed trains only what it lacks: the default, the best, the baseline
    assert tuning.main(["--profile", "quick", "--options", options, "--confirm-only", "--seeds", "0,1,2,3"]) == 0
    extended = json.loads((folder / "tuning.json").read_text())
    assert extended["runs_trained"] - record["runs_trained"] == 2 + tuned_elsewhere and extended["seeds"] == [0, 1, 2, 3]
    longer = pd.read_csv(folder / "confirmation.csv")
    assert len(longer) == len(confirmation) + len(confirmation) // 3 and longer.iloc[:len(confirmation)].empty is False
    assert set(tuning.tuned_rows(longer)["seed"]) == {1, 2, 3} and len(extended["commands"]) == 2
    # a method tuned later joins the folder: kd's rows are kept
    assert tuning.main(["--profile", "quick", "--options", options, "--methods", "idd", "--trials", "2",
                        "--tune-seeds", "0", "--seeds", "0,1,2,3"]) == 0
    joined = json.loads((folder / "tuning.json").read_text())
    assert joined["methods"] == ["kd", "idd"] and len(joined["commands"]) == 3
    both = pd.read_csv(folder / "confirmation.csv")
    pd.testing.assert_frame_equal(both[both["method"] == "kd"].reset_index(drop=True),
                                  longer[longer["method"] == "kd"].reset_index(drop=True), check_dtype=False)
    assert set(pd.read_csv(folder / "selection.csv")["method"]) == {"kd", "idd"}
    confirmation = both
    assert (folder / "figures" / "tuning.png").is_file() and (folder / "selection.csv").is_file()
    # committed with the project: a study without its own tuning adopts it, at the same profile only
    import shutil
    from idd_lib import paths, presets
    project = tmp_path / "project"
    shutil.copytree(folder, paths.reference_dir("quick", project / "reference") / "tuning")
    shutil.rmtree(folder)
    monkeypatch.setattr(paths, "project_root", lambda start=None: project)
    adopted = tuning.adopt_committed_tuning(presets.study_profile("quick", options))
    assert adopted == folder and "committed with the project" in json.loads((folder / "tuning.json").read_text())["source"]
    assert pd.read_csv(folder / "confirmation.csv").equals(confirmation)
    assert tuning.adopt_committed_tuning(presets.study_profile("quick", options + ",train.iterations=3")) is None
    assert not folder.exists()  # the adopted copy of another profile's tuning is gone
