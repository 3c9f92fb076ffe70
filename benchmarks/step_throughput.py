"""Distillation step throughput (images/s) and peak memory, variant by variant, in one run.

The step is the training loop's own (:func:`idd_lib.engine.training_step`) on random data of the
profile's crop and batch. Variants (``--variants``):

* ``fp32-eager``: fp32, NCHW, no compile (the peers' style)
* ``bf16``: bf16 autocast
* ``bf16-cl``: bf16 + channels_last
* ``bf16-cl-compile``: bf16 + channels_last + ``torch.compile`` (student and teacher)
* ``networks-only``: the best variant's settings without the distillation losses (teacher forward
  + student forward/backward with cross-entropy): the limit the loss terms are measured against.

On CPU the default leaves out compile (minutes of compiling for a short timing); bf16 pays on a CPU
with native bf16 (AVX512-BF16 or AMX), where the default profile's students use it (``train.cpu_amp``).

    .venv/bin/python benchmarks/step_throughput.py --profile paper-cityscapes          # GPU
    .venv/bin/python benchmarks/step_throughput.py --profile default --method idd+pid  # CPU
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from _common import add_size_arguments, image_size, loss_config, random_batch, ready_for_timing, sized_profile
from idd_lib.config import LossConfig
from idd_lib.data.datasets import dataset_spec
from idd_lib.engine import resolve_device, training_step
from idd_lib.losses import DistillationCriterion
from idd_lib.models import build_segmentor
from idd_lib.provenance import device_name

GPU_VARIANTS = ("fp32-eager", "bf16", "bf16-cl", "bf16-cl-compile", "networks-only")
CPU_VARIANTS = ("fp32-eager", "bf16", "bf16-cl", "networks-only")


@dataclasses.dataclass(frozen=True)
class Variant:
    amp: bool
    channels_last: bool
    compile: bool
    losses: bool = True


def variant_settings(name: str, best: Variant) -> Variant:
    table = {"fp32-eager": Variant(False, False, False), "bf16": Variant(True, False, False),
             "bf16-cl": Variant(True, True, False), "bf16-cl-compile": Variant(True, True, True),
             "networks-only": dataclasses.replace(best, losses=False)}
    if name not in table:
        raise SystemExit(f"--variants: unknown variant {name!r}; expected among {sorted(table)}")
    return table[name]


def measure(profile, losses: LossConfig, variant: Variant, device: torch.device, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    k = dataset_spec(profile.data).num_classes
    batch = profile.data.batch_size
    fmt = torch.channels_last if variant.channels_last else torch.contiguous_format
    student = build_segmentor(profile.student, k).to(device, memory_format=fmt).train()
    teacher = build_segmentor(profile.teacher, k).to(device, memory_format=fmt).eval().requires_grad_(False)
    criterion = DistillationCriterion(losses if variant.losses else LossConfig("baseline"), k,
                                      student.feature_channels, teacher.feature_channels).to(device)
    criterion.needs_teacher = True  # networks-only still runs the teacher forward
    network, teacher_net = (torch.compile(student), torch.compile(teacher)) if variant.compile else (student, teacher)
    optimizer = torch.optim.SGD([*student.parameters(), *criterion.student_parameters()], lr=1e-3, momentum=0.9)
    images, labels = random_batch(profile, k, device)
    images = images.contiguous(memory_format=fmt)
    if criterion.pending_prefits():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.amp):
            ready_for_timing(criterion, teacher(images))

    def run(n: int) -> None:
        for _ in range(n):
            training_step(network, teacher_net, criterion, optimizer, images, labels, variant.amp)
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    run(warmup)  # compiles, with torch.compile: its cost is the warm-up's excess over timed steps
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run(steps)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"step_ms": seconds * 1e3, "images_per_s": batch / seconds, "peak_memory_gib": peak,
            "warmup_s": warmup_s, "compile_s": max(0.0, warmup_s - warmup * seconds) if variant.compile else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_arguments(parser, "paper-cityscapes")
    parser.add_argument("--method", default="idd+pid")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", default="", help="comma-separated; default: all on CUDA, all but compile on CPU")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/step_throughput.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    profile = sized_profile(args)
    data = profile.data
    names = [v for v in args.variants.split(",") if v] or list(GPU_VARIANTS if device.type == "cuda" else CPU_VARIANTS)
    best = Variant(True, True, device.type == "cuda")  # networks-only at the fastest settings (no compile on CPU)
    losses = loss_config(args, args.method)
    rows = []
    for name in names:
        row = {"variant": name, **measure(profile, losses, variant_settings(name, best), device, args.steps,
                                          args.warmup)}
        rows.append(row)
        print(f"{name:<18}{row['step_ms']:>10.1f} ms{row['images_per_s']:>10.1f} img/s"
              + (f"{row['peak_memory_gib']:>8.2f} GiB" if row["peak_memory_gib"] is not None else ""), flush=True)
    by_name = {r["variant"]: r for r in rows}
    distilled = [r for r in rows if r["variant"] != "networks-only"]
    fastest = max(distilled, key=lambda r: r["images_per_s"]) if distilled else None
    summary = {"device": device_name(device), "profile": profile.name, "method": args.method,
               "batch": data.batch_size, "crop": list(image_size(data)),
               "variants": rows}
    if fastest and "fp32-eager" in by_name:
        summary["best_vs_fp32_eager"] = fastest["images_per_s"] / by_name["fp32-eager"]["images_per_s"]
    if fastest and "networks-only" in by_name:
        summary["best_vs_networks_only"] = fastest["images_per_s"] / by_name["networks-only"]["images_per_s"]
    print(f"device: {summary['device']}  profile {profile.name}  method {args.method}  "
          f"batch {data.batch_size} x {summary['crop'][0]}x{summary['crop'][1]}")
    for key in ("best_vs_fp32_eager", "best_vs_networks_only"):
        if key in summary:
            print(f"{key}: {summary[key]:.2f} ({fastest['variant']})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
