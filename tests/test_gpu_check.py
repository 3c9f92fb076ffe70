"""The GPU acceptance command (benchmarks/gpu_check.py): its table, its docs section, its errors, and
its CPU smoke run end to end, so it keeps working where no GPU is."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check(benchmark_script):
    return benchmark_script("gpu_check")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", **os.environ})


def test_help_names_the_parts_and_bad_values_are_one_line_errors():
    done = _run("--help")
    assert done.returncode == 0 and "--smoke" in done.stdout and "--budget-s" in done.stdout
    for args, name in ((["--smoke", "--budget-s", "0"], "--budget-s"), (["--smoke", "--iterations", "-1"], "--iterations")):
        done = _run(*args)
        assert done.returncode == 2 and f"{name}: expected a positive number" in done.stderr


def _report(gpus: int) -> dict:
    speed = [{"config": "fp32-eager", "method": "idd+pid", "images_per_s": 10.0, "step_ms": 800.0, "peak_memory_gib": 30.0},
             {"config": "bf16-cl", "method": "idd+pid", "images_per_s": 20.0, "step_ms": 400.0, "peak_memory_gib": 18.0},
             {"config": "bf16-cl-compile", "method": "idd+pid", "skipped": "out of its time budget"},
             {"config": "networks-only", "method": "baseline", "images_per_s": 25.0, "step_ms": 320.0},
             {"config": "kd bf16-cl", "method": "kd", "images_per_s": 24.0, "step_ms": 330.0}]
    return {"machine": {"device": "NVIDIA H100", "torch": "2.14.1", "gpus": gpus}, "speed": speed,
            "training": {"loss_first_tenth": 4.0, "loss_last_tenth": 2.5, "miou": 12.3}}


def test_ratios_are_throughput_over_fp32_and_terms_over_the_networks_step(gpu_check):
    report = _report(1)
    ratios = gpu_check.ratios(report["speed"])
    assert ratios["bf16-cl_vs_fp32_eager"] == pytest.approx(2.0)
    assert ratios["idd+pid_terms_share"] == pytest.approx(1 - 320 / 400)
    assert ratios["kd_terms_share"] == pytest.approx(1 - 320 / 330)
    assert "bf16-cl-compile_vs_fp32_eager" not in ratios and "cwd-cirkd_terms_share" not in ratios


def test_the_docs_table_is_filled_from_the_json_and_says_what_is_not_measured(gpu_check, tmp_path):
    docs = tmp_path / "speed.md"
    start, end = gpu_check.MARKERS
    docs.write_text(f"before\n{start}\nold\n{end}\nafter\n")
    report = {**_report(1), "ratios": gpu_check.ratios(_report(1)["speed"])}
    gpu_check.write_docs(report, docs)
    text = docs.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert "| bf16 + channels_last (img/s) | 20 |" in text and "| bf16-cl / fp32 eager | 2 |" in text
    assert f"| bf16 + channels_last + compile (img/s) | {gpu_check.NOT_MEASURED} |" in text
    assert "| 200 iterations: loss first/last tenth, mIoU | 4.000 / 2.500, 12.3 |" in text
    gpu_check.write_docs({**report, "machine": {**report["machine"], "gpus": 0}}, docs)  # a CPU run claims nothing
    assert docs.read_text().count(gpu_check.NOT_MEASURED) == len(gpu_check.DOC_ROWS)
    docs.write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        gpu_check.write_docs(report, docs)


def test_the_committed_docs_claim_no_gpu_figure_without_its_json(gpu_check):
    text = (ROOT / "docs" / "speed-and-scale.md").read_text()
    start, end = gpu_check.MARKERS
    section = text[text.index(start):text.index(end)]
    committed = ROOT / "benchmarks" / "results" / "gpu_check.json"
    if committed.exists():
        report = json.loads(committed.read_text())
        assert section.strip() == f"{start}\n{gpu_check.docs_table(report)}".strip()
    else:
        assert "No GPU run committed yet." in section and "| figure | value |" in section


@pytest.mark.slow
def test_the_smoke_run_trains_evaluates_and_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = _run("--smoke", "--iterations", "30", "--steps", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["machine"]["gpus"] == 0 and report["ddp"]["skipped"]
    configs = {row["config"] for row in report["speed"]}
    assert {"fp32-eager", "bf16-cl", "networks-only", "kd bf16-cl", "cwd-cirkd bf16-cl"} <= configs
    assert all(row["images_per_s"] > 0 for row in report["speed"] if "images_per_s" in row)
    training = report["training"]
    assert training["passed"] and training["finite"] and training["iterations"] == 30
    assert training["method"] == "idd+pid" and training["pid_teacher_fit"] == "joint"  # what it trained, in the JSON
    assert training["loss_last_tenth"] < training["loss_first_tenth"] and 0 <= training["miou"] <= 100
    assert "training check: passed" in done.stdout
