"""The benchmark scripts run end to end on tiny sizes and write the JSON the README summarises
(their figures are measured by running them, never asserted here)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", **os.environ})
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_step_throughput_writes_every_variant(tmp_path):
    out = tmp_path / "steps.json"
    _run("step_throughput.py", "--profile", "quick", "--device", "cpu", "--batch", "2", "--steps", "1",
         "--warmup", "0", "--variants", "fp32-eager,bf16,networks-only", "--out", str(out),
         "--loss-options", "pid.teacher_fit=prefit")  # a term fitted before training is fitted before timing
    summary = json.loads(out.read_text())
    assert [r["variant"] for r in summary["variants"]] == ["fp32-eager", "bf16", "networks-only"]
    assert all(r["images_per_s"] > 0 and r["peak_memory_gib"] is None for r in summary["variants"])
    assert summary["batch"] == 2 and summary["best_vs_fp32_eager"] > 0 and summary["best_vs_networks_only"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("options", ["", "pid.teacher_fit=prefit"])
def test_loss_overhead_times_every_distillation_term(tmp_path, options):
    from idd_lib.losses import TERM_BUILDERS
    out = tmp_path / "terms.json"
    _run("loss_overhead.py", "--profile", "quick", "--device", "cpu", "--repeats", "1", "--out", str(out),
         "--loss-options", options)
    summary = json.loads(out.read_text())
    assert sorted(r["term"] for r in summary["terms"]) == sorted(set(TERM_BUILDERS) - {"ce"})
    assert summary["networks_step_ms"] > 0 and 0 < summary["idd_plus_pid_share"] < 1
    assert summary["kd_step_ms"] > 0 and summary["idd_pid_step_ms"] > 0
    assert summary["idd_plus_pid_share_in_situ"] < 1


@pytest.mark.slow
def test_loss_precision_compares_every_term_on_the_trained_networks(tmp_path, quick_study):
    from idd_lib.losses import TERM_BUILDERS
    out = tmp_path / "precision.json"
    _run("loss_precision.py", "--profile", "quick", "--trained", "--device", "cpu", "--batches", "1", "--out", str(out))
    summary = json.loads(out.read_text())
    assert summary["trained"] and [r["term"] for r in summary["rows"]] == sorted(set(TERM_BUILDERS) - {"ce"})
    errors = [v for row in summary["rows"] for key, v in row.items() if key != "term"]
    assert len(errors) == 4 * len(summary["rows"]) and all(0 <= v < 1 for v in errors)


def test_unknown_variant_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_throughput.py"), "--variants", "fast",
                           "--profile", "quick", "--device", "cpu", "--out", str(tmp_path / "x.json")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1].startswith("--variants: unknown variant 'fast'")


def test_bad_loss_option_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_throughput.py"), "--loss-options",
                           "pid.hiden=0", "--profile", "quick", "--device", "cpu", "--out", str(tmp_path / "x.json")],
                          cwd=ROOT, capture_output=True, text=True)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode != 0 and last.startswith("--loss-options: options: unknown option 'pid.hiden'"), last
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_sweep_throughput_measures_every_setting(tmp_path):
    out = tmp_path / "sweep.json"
    _run("sweep_throughput.py", "--profile", "quick", "--options", "train.iterations=2,teacher_train.iterations=2",
         "--methods", "baseline,kd", "--settings", "inline:1x1,local:2x1", "--out", str(out))
    summary = json.loads(out.read_text())
    assert [r["setting"] for r in summary["settings"]] == ["inline:1x1", "local:2x1"]
    assert all(r["runs"] == 2 and r["runs_per_hour"] > 0 and r["train_s_per_run"] > 0 for r in summary["settings"])


def test_simulated_reproductions_keep_the_reference_layout_and_a_lost_lead_is_a_lost_lead(benchmark_script):
    import numpy as np
    import pandas as pd
    simulation = benchmark_script("verify_false_alarm")
    ref = pd.read_csv(ROOT / "reference" / "default" / "runs.csv")
    rng = np.random.default_rng(0)
    faithful, lost = simulation.draw(ref, rng), simulation.draw(ref, np.random.default_rng(0), lost_lead=True)
    assert list(faithful[["method", "seed", "config_digest"]].itertuples(index=False)) == \
        list(ref[["method", "seed", "config_digest"]].itertuples(index=False))
    by = {name: t.groupby("method")["miou"].mean() for name, t in (("faithful", faithful), ("lost", lost), ("ref", ref))}
    assert by["lost"]["kd"] == pytest.approx(by["faithful"]["kd"])
    assert by["lost"]["idd"] - by["faithful"]["idd"] == pytest.approx(by["ref"]["kd"] - by["ref"]["idd"])


def test_verify_passes_faithful_draws_and_fails_a_lost_lead(benchmark_script):
    rates = benchmark_script("verify_false_alarm").simulate(ROOT / "reference" / "default", sims=4, seed=1)
    assert rates["miss_rate"] == 0.0 and rates["false_alarm_rate"] <= 0.25
