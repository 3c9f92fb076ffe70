"""Cost of each distillation loss term as a share of the student's training step.

Prints a table and writes JSON (``--out``). For each term in the registry: forward+backward time
of the term alone on real output shapes, divided by the time of the networks-only training step
(:func:`idd_lib.engine.training_step`: teacher forward, student forward/backward with cross-entropy,
SGD). Timings are medians of interleaved rounds inside one run, so the ratios are comparable on a
noisy machine.

In situ, the same rounds also time whole training steps of the ``kd`` and ``idd+pid`` methods
(their read-outs in the optimiser, as in training): the difference is what IDD+PID add to a real
step, including what a term alone does not show (the optimiser's work on the read-outs, the shared
backward pass).

    .venv/bin/python benchmarks/loss_overhead.py --profile default          # CPU, default sizes
    .venv/bin/python benchmarks/loss_overhead.py --profile paper-cityscapes  # GPU, paper sizes
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from _common import add_size_arguments, image_size, loss_config, random_batch, ready_for_timing, sized_profile
from idd_lib.data.datasets import dataset_spec
from idd_lib.engine import resolve_device, training_step
from idd_lib.provenance import device_name
from idd_lib.losses import TERM_BUILDERS, DistillationCriterion
from idd_lib.models import build_segmentor


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_arguments(parser, "default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/loss_overhead.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    profile = sized_profile(args)
    device = resolve_device(args.device)
    amp = device.type == "cuda"  # the training loop's bf16 autocast
    k = dataset_spec(profile.data).num_classes
    h, w = image_size(profile.data)
    batch = profile.data.batch_size
    images, labels = random_batch(profile, k, device)
    student = build_segmentor(profile.student, k).to(device).train()
    teacher = build_segmentor(profile.teacher, k).to(device).eval().requires_grad_(False)
    # the networks-only step: teacher forward + student forward/backward with cross-entropy + SGD
    networks = DistillationCriterion(loss_config(args, "baseline"), k, student.feature_channels,
                                     teacher.feature_channels).to(device)
    networks.needs_teacher = True
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        teacher_out = teacher(images)
        student_out = {name: v.detach().requires_grad_() for name, v in student(images).items()}
    # each term alone in a criterion of its own, so it runs as in training (in fp32 under autocast)
    terms = {term: ready_for_timing(DistillationCriterion(loss_config(args, "baseline", ((term, 1.0), ("ce", 0.0))), k,
                                                          student.feature_channels, teacher.feature_channels).to(device),
                                    teacher_out)
             for term in sorted(set(TERM_BUILDERS) - {"ce"})}

    def term_step(criterion):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            value, _ = criterion(student_out, teacher_out, labels, images)
        value.backward()

    def step():
        training_step(student, teacher, networks, optimizer, images, labels, amp)

    def method_step(method: str):
        criterion = ready_for_timing(DistillationCriterion(loss_config(args, method), k, student.feature_channels,
                                                           teacher.feature_channels).to(device), teacher_out)
        method_optimizer = torch.optim.SGD([*student.parameters(), *criterion.student_parameters()],
                                           lr=1e-3, momentum=0.9)
        return lambda: training_step(student, teacher, criterion, method_optimizer, images, labels, amp)

    in_situ = {"kd step": method_step("kd"), "idd+pid step": method_step("idd+pid")}

    # interleaved rounds, medians: the machine's drift hits every measurement alike
    times: dict[str, list[float]] = {"step": [], **{name: [] for name in in_situ}, **{t: [] for t in terms}}
    for _ in range(args.repeats + 2):
        times["step"].append(_timed(step, device))
        for name, fn in in_situ.items():
            times[name].append(_timed(fn, device))
        for name, criterion in terms.items():
            times[name].append(_timed(lambda: term_step(criterion), device))
    median = {name: statistics.median(values[2:]) for name, values in times.items()}  # two warm-up rounds
    step_s = median.pop("step")
    kd_step_s, idd_pid_step_s = median.pop("kd step"), median.pop("idd+pid step")
    rows = [{"term": t, "ms": s * 1e3, "share_of_step": s / step_s} for t, s in median.items()]
    idd_pid = median["idd"] + median["pid"]
    summary = {"profile": profile.name, "device": device_name(device), "batch": batch, "image": [h, w],
               "amp": amp, "networks_step_ms": step_s * 1e3, "terms": rows,
               "idd_plus_pid_share": idd_pid / (step_s + idd_pid),
               "kd_step_ms": kd_step_s * 1e3, "idd_pid_step_ms": idd_pid_step_s * 1e3,
               "idd_plus_pid_share_in_situ": (idd_pid_step_s - kd_step_s) / idd_pid_step_s}
    print(f"device: {summary['device']}  profile: {profile.name}  batch {batch} x {h}x{w}  bf16: {amp}")
    print(f"networks-only step (teacher fwd + student fwd/bwd + SGD): {step_s * 1e3:.1f} ms")
    print(f"{'term':<10}{'ms':>9}{'share':>9}")
    for row in rows:
        print(f"{row['term']:<10}{row['ms']:>9.2f}{row['share_of_step']:>9.1%}")
    print(f"IDD + PID share of an IDD+PID step: {summary['idd_plus_pid_share']:.1%} (terms alone); "
          f"{summary['idd_plus_pid_share_in_situ']:.1%} in situ (idd+pid step {idd_pid_step_s * 1e3:.1f} ms "
          f"vs kd step {kd_step_s * 1e3:.1f} ms)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
