"""Cost of each distillation loss term as a share of the student's training step.

Prints a table and writes JSON (``--out``). For each term in the registry: forward+backward time
of the term alone on real output shapes, divided by the time of one student step (student
forward/backward/SGD on the same batch, teacher forward included when distilling). Timings are
medians over repeats inside one run, so the ratios are comparable on a noisy machine.

    .venv/bin/python benchmarks/loss_overhead.py --profile default          # CPU, default sizes
    .venv/bin/python benchmarks/loss_overhead.py --profile default --device cuda
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from idd_lib.config import LossConfig, get_profile
from idd_lib.data.datasets import dataset_spec
from idd_lib.engine import resolve_device
from idd_lib.provenance import device_name
from idd_lib.losses import TERM_BUILDERS, DistillationCriterion
from idd_lib.models import build_segmentor


def _timed(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])  # first two are warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/loss_overhead.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    profile = get_profile(args.profile)
    device = resolve_device(args.device)
    spec = dataset_spec(profile.data)
    k = spec.num_classes
    h, w = profile.data.crop_size or (profile.data.synthetic.height, profile.data.synthetic.width)
    images = torch.randn(profile.data.batch_size, 3, h, w, device=device)
    labels = torch.randint(0, k, (profile.data.batch_size, h, w), device=device)
    labels[:, :2] = 255
    student = build_segmentor(profile.student, k).to(device).train()
    teacher = build_segmentor(profile.teacher, k).to(device).eval().requires_grad_(False)
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    with torch.no_grad():
        teacher_out = teacher(images)

    def student_step(with_teacher: bool):
        if with_teacher:
            with torch.no_grad():
                teacher(images)
        out = student(images)
        loss = torch.nn.functional.cross_entropy(
            torch.nn.functional.interpolate(out["out"], size=(h, w), mode="bilinear"), labels, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_alone = _timed(lambda: student_step(False), device, args.repeats)
    step_distill = _timed(lambda: student_step(True), device, args.repeats)
    rows = []
    for term in sorted(TERM_BUILDERS):
        criterion = DistillationCriterion(LossConfig("baseline", weights=((term, 1.0),)), k,
                                          student.feature_channels, teacher.feature_channels).to(device)
        criterion.terms = torch.nn.ModuleDict({term: criterion.terms[term]})
        student_out = {name: v.detach().requires_grad_() for name, v in student(images).items()}

        def term_step():
            value = criterion.terms[term](student_out, teacher_out, labels)
            value.backward()

        seconds = _timed(term_step, device, args.repeats)
        rows.append({"term": term, "ms": seconds * 1e3, "share_of_distill_step": seconds / step_distill})
    idd_pid = sum(r["ms"] for r in rows if r["term"] in ("idd", "pid")) / 1e3
    summary = {"profile": profile.name, "device": device_name(device), "batch": profile.data.batch_size,
               "image": [h, w], "student_step_ms": step_alone * 1e3, "distill_step_ms": step_distill * 1e3,
               "terms": rows, "idd_plus_pid_share": idd_pid / (step_distill + idd_pid)}
    print(f"device: {summary['device']}  profile: {profile.name}  batch {profile.data.batch_size} x {h}x{w}")
    print(f"student step {step_alone * 1e3:.1f} ms; with teacher forward {step_distill * 1e3:.1f} ms")
    print(f"{'term':<10}{'ms':>9}{'share':>9}")
    for row in rows:
        print(f"{row['term']:<10}{row['ms']:>9.2f}{row['share_of_distill_step']:>9.1%}")
    print(f"IDD + PID share of a distillation step: {summary['idd_plus_pid_share']:.1%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
