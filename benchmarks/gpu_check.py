"""The GPU acceptance check: the paper-scale path runs, and how fast, in one command (8 minutes).

On one CUDA device, each part within its share of ``--budget-s`` (default 480 s):

1. **Speed**: images/s and peak memory of the paper-cityscapes student step (512x1024, batch 8,
   PSPNet-R101 -> PSPNet-R18) for ``idd+pid`` in fp32 eager, bf16 autocast + channels_last, and the
   same under ``torch.compile`` (its compile time apart), as ratios to fp32 eager; then, at the
   fastest eager settings, the networks alone (teacher forward + student forward/backward, cross-
   entropy) and ``kd``, ``cwd-cirkd``: the share of a step each method's terms cost.
2. **Training**: ``--iterations`` (200) steps of idd+pid on the embedded synthetic benchmark
   generated at the paper's resolution, then an evaluation: the loss must fall, stay finite, and
   the mIoU must be computed. The teacher is untrained (no weights can be fetched), with its
   batch-norm statistics set on 4 training batches (``torch.optim.swa_utils.update_bn``).
3. **Data parallel**: the GPU count only. A torchrun (NCCL) step and its scaling efficiency are not
   measured by this script yet (lent machines have one GPU); docs/speed-and-scale.md has the command.

It writes one JSON (machine, torch/CUDA versions, every figure) and prints a short table.
``--smoke`` runs the same parts on CPU at a tiny size in seconds (the test suite does);
``--write-docs JSON`` fills docs/speed-and-scale.md's table from a JSON.

    make install && .venv/bin/python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

from step_throughput import Variant, measure
from idd_lib.config import LossConfig
from idd_lib.data.datasets import build_dataset, dataset_spec, eval_loader, train_loader
from idd_lib.data.synthetic import SyntheticConfig
from idd_lib.engine import evaluate, resolve_device, training_step
from idd_lib.losses import DistillationCriterion
from idd_lib.models import build_segmentor
from idd_lib.presets import get_profile
from idd_lib.provenance import device_name

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "speed-and-scale.md"
MARKERS = ("<!-- gpu-check:start -->", "<!-- gpu-check:end -->")
NOT_MEASURED = "not yet measured on a GPU"
SPEED = {"fp32-eager": Variant(False, False, False), "bf16-cl": Variant(True, True, False),
         "bf16-cl-compile": Variant(True, True, True)}
METHODS = ("idd+pid", "kd", "cwd-cirkd")
SHARES = {"speed": 0.6, "training": 0.4}  # of the budget


def check_profile(smoke: bool):
    """The paper-cityscapes networks on the synthetic benchmark at the paper's crop (smoke: tiny)."""
    paper = get_profile("paper-cityscapes")
    h, w = (64, 128) if smoke else (512, 1024)
    synthetic = SyntheticConfig(num_train=8 if smoke else 32, num_val=2 if smoke else 8, num_tune=2, height=h, width=w)
    data = dataclasses.replace(paper.data, dataset="synthetic", root="", synthetic=synthetic, crop_size=(h, w),
                               base_size=0, batch_size=2 if smoke else 8, num_workers=0 if smoke else 4)
    nets = {"teacher": dataclasses.replace(paper.teacher, width=1 / 16, head_channels=16) if smoke else paper.teacher,
            "student": dataclasses.replace(paper.student, width=1 / 16, head_channels=16) if smoke else paper.student}
    return dataclasses.replace(paper, data=data, **nets)


def speed(profile, device, steps: int, deadline: float) -> list[dict]:
    """Part 1: one row per configuration, until the deadline."""
    configs = [(name, "idd+pid", v) for name, v in SPEED.items() if device.type == "cuda" or not v.compile]
    best = Variant(True, True, False)
    configs += [("networks-only", "baseline", dataclasses.replace(best, losses=False))]
    configs += [(f"{m} bf16-cl", m, best) for m in METHODS[1:]]
    rows = []
    for name, method, variant in configs:
        if time.monotonic() > deadline:
            rows.append({"config": name, "method": method, "skipped": "out of its time budget"})
            continue
        row = measure(profile, LossConfig(method), variant, device, steps, warmup=2 if steps < 5 else 5)
        rows.append({"config": name, "method": method, **row})
        print(f"{name:<18}{row['images_per_s']:>9.2f} img/s" + (f"{row['peak_memory_gib']:>8.2f} GiB"
                                                             if row["peak_memory_gib"] else ""), flush=True)
    return rows


def ratios(rows: list[dict]) -> dict[str, float]:
    """Throughput ratios to fp32 eager, and each method's terms' share of a bf16-cl step."""
    by = {r["config"]: r for r in rows if "images_per_s" in r}
    out = {}
    if "fp32-eager" in by:
        out.update({f"{name}_vs_fp32_eager": by[name]["images_per_s"] / by["fp32-eager"]["images_per_s"]
                    for name in by if name in SPEED and name != "fp32-eager"})
    if "networks-only" in by:
        nets = by["networks-only"]["step_ms"]
        steps = {"idd+pid": by.get("bf16-cl"), **{m: by.get(f"{m} bf16-cl") for m in METHODS[1:]}}
        out.update({f"{m}_terms_share": 1 - nets / r["step_ms"] for m, r in steps.items() if r})
    return out


def training(profile, device, iterations: int, deadline: float) -> dict:
    """Part 2: idd+pid on the synthetic benchmark, then an evaluation."""
    torch.manual_seed(0)
    k = dataset_spec(profile.data).num_classes
    student = build_segmentor(profile.student, k).to(device).train()
    teacher = build_segmentor(profile.teacher, k).to(device)
    train_set = build_dataset(profile.data, "train", train=True)
    # no weights can be downloaded: an untrained teacher's features explode through 101 layers of
    # batch norm at its initial statistics (PID's loss reached 1e7 at step 0), so its statistics are set first
    update_bn((images.to(device) for images, _ in train_loader(train_set, profile.data, 4, seed=1)), teacher)
    teacher.eval().requires_grad_(False)
    losses = LossConfig("idd+pid")
    criterion = DistillationCriterion(losses, k, student.feature_channels, teacher.feature_channels).to(device)
    optimizer = torch.optim.SGD([*student.parameters(), *criterion.student_parameters()],
                                lr=profile.student_train.lr, momentum=0.9, weight_decay=1e-4)
    amp = device.type == "cuda"
    started, values = time.monotonic(), []
    for images, labels in train_loader(train_set, profile.data, iterations, 0):
        images, labels = images.to(device), labels.to(device)
        loss, _ = training_step(student, teacher, criterion, optimizer, images, labels, amp)
        values.append(float(loss.detach()))
        if time.monotonic() > deadline or not math.isfinite(values[-1]):
            break
    metrics = evaluate(student, eval_loader(build_dataset(profile.data, "val", train=False)), k, device, amp)
    tenth = max(1, len(values) // 10)
    first, last = sum(values[:tenth]) / tenth, sum(values[-tenth:]) / tenth
    finite = all(math.isfinite(v) for v in values)
    return {"iterations": len(values), "iterations_asked": iterations, "seconds": time.monotonic() - started,
            "loss_first_tenth": first, "loss_last_tenth": last, "finite": finite, "miou": metrics["miou"],
            "passed": finite and last < first and math.isfinite(metrics["miou"]), "method": losses.method,
            "pid_teacher_fit": losses.pid.teacher_fit, "teacher": "untrained, batch-norm statistics set on 4 batches"}


def data_parallel(device) -> dict:
    """Part 3, not measured by this script yet: the GPU count, and where the data-parallel command is."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    reason = "fewer than 2 GPUs" if gpus < 2 else "not implemented in gpu_check.py yet: run docs/speed-and-scale.md's torchrun command"
    return {"gpus": gpus, "skipped": reason}


def machine(device) -> dict:
    return {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpus": torch.cuda.device_count() if device.type == "cuda" else 0}


DOC_ROWS = [("fp32 eager, idd+pid (img/s)", ("speed", "fp32-eager", "images_per_s")),
            ("bf16 + channels_last (img/s)", ("speed", "bf16-cl", "images_per_s")),
            ("bf16 + channels_last + compile (img/s)", ("speed", "bf16-cl-compile", "images_per_s")),
            ("compile time (s)", ("speed", "bf16-cl-compile", "compile_s")),
            ("bf16-cl / fp32 eager", ("ratios", "bf16-cl_vs_fp32_eager")),
            ("bf16-cl-compile / fp32 eager", ("ratios", "bf16-cl-compile_vs_fp32_eager")),
            ("share of a step: idd+pid terms", ("ratios", "idd+pid_terms_share")),
            ("share of a step: kd", ("ratios", "kd_terms_share")),
            ("share of a step: cwd-cirkd", ("ratios", "cwd-cirkd_terms_share")),
            ("peak memory, bf16-cl idd+pid (GiB)", ("speed", "bf16-cl", "peak_memory_gib")),
            ("200 iterations: loss first/last tenth, mIoU", ("training",))]


def _cell(report: dict | None, path: tuple) -> str:
    if report is None or not report.get("machine", {}).get("gpus"):
        return NOT_MEASURED
    if path[0] == "speed":
        row = next((r for r in report["speed"] if r["config"] == path[1]), {})
        value = row.get(path[2])
    elif path[0] == "training":
        t = report["training"]
        return f"{t['loss_first_tenth']:.3f} / {t['loss_last_tenth']:.3f}, {t['miou']:.1f}"
    else:
        value = report.get(path[0], {}).get(path[1])
    return NOT_MEASURED if value is None else f"{value:.3g}"


def docs_table(report: dict | None) -> str:
    head = f"Measured on: {report['machine']['device']}, torch {report['machine']['torch']}" if report and \
        report["machine"]["gpus"] else "No GPU run committed yet."
    lines = [head, "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {_cell(report, path)} |" for name, path in DOC_ROWS]
    return "\n".join(lines)


def write_docs(report: dict | None, docs: Path = DOCS) -> None:
    """Replace the table between the markers of docs/speed-and-scale.md."""
    text = docs.read_text()
    start, end = MARKERS
    if start not in text or end not in text:
        raise SystemExit(f"{docs}: no {start} ... {end} markers to write the table between")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    docs.write_text(pattern.sub(lambda _: f"{start}\n{docs_table(report)}\n{end}", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny networks and images: seconds")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall budget of all parts together")
    parser.add_argument("--iterations", type=int, default=200, help="training iterations of part 2")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per speed configuration")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    parser.add_argument("--write-docs", type=Path, metavar="JSON", help="fill docs/speed-and-scale.md from a JSON")
    args = parser.parse_args(argv)
    if args.write_docs:
        write_docs(json.loads(args.write_docs.read_text()))
        return 0
    for name in ("budget_s", "iterations", "steps"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')}: expected a positive number, got {getattr(args, name)}")
    device = resolve_device("cpu" if args.smoke else args.device)
    if device.type != "cuda" and not args.smoke:
        parser.error("no CUDA device: the check measures a GPU; --smoke runs it on CPU at a tiny size")
    profile, start = check_profile(args.smoke), time.monotonic()
    shares = {part: start + args.budget_s * sum(list(SHARES.values())[:i + 1]) for i, part in enumerate(SHARES)}
    report = {"machine": machine(device), "profile": "paper-cityscapes", "smoke": args.smoke,
              "batch": profile.data.batch_size, "crop": list(profile.data.crop_size), "budget_s": args.budget_s}
    report["speed"] = speed(profile, device, args.steps, shares["speed"])
    report["ratios"] = ratios(report["speed"])
    report["training"] = training(profile, device, args.iterations, shares["training"])
    report["ddp"] = data_parallel(device)
    report["wall_s"] = time.monotonic() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(docs_table(report if device.type == "cuda" else {**report, "machine": {**report["machine"], "gpus": 1}}))
    print(f"training check: {'passed' if report['training']['passed'] else 'FAILED'}; {report['wall_s']:.0f} s")
    return 0 if report["training"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
