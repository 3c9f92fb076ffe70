"""How precisely each distillation term is computed when the networks run in bf16.

The training loop runs the networks under bf16 autocast on CUDA, so their outputs come in bf16.
For every term, its value and its gradient with respect to the student's outputs are compared
with the fp32 reference (fp32 outputs, fp32 term) in two settings, on the same bf16 outputs:

* ``fp32 term``: the term in fp32, as :class:`~idd_lib.losses.DistillationCriterion` runs it;
* ``bf16 term``: the term itself under the autocast too (its matmuls and convolutions in bf16).

The difference between the two is the term's own precision; what both share is the rounding of
the networks' outputs. Errors are relative (``|a - ref| / |ref|``, gradient norms), medians over
``--batches`` random batches of the profile's size. Autocast is the device's (CPU autocast on a
CPU), so the figures need no GPU. The networks are freshly initialised, or with ``--trained`` the
profile's trained teacher and seed-0 baseline student (trained features have the large common
offsets that make rounding errors matter; the teacher is trained first if not cached).

    .venv/bin/python benchmarks/loss_precision.py --profile default --trained
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch

from _common import add_size_arguments, loss_config, random_batch, ready_for_timing, sized_profile
from idd_lib import runs
from idd_lib.data.datasets import dataset_spec
from idd_lib.engine import resolve_device
from idd_lib.losses import TERM_BUILDERS, DistillationCriterion
from idd_lib.models import build_segmentor
from idd_lib.provenance import device_name


def evaluate(criterion: DistillationCriterion, student_out, teacher_out, labels, images, *, amp: bool,
             term_in_autocast: bool) -> tuple[float, torch.Tensor]:
    """The term's value and its gradient w.r.t. the student's outputs (flattened), on a copy of
    the criterion (terms with state, e.g. CIRKD's queues, start equal) and the same random draws."""
    criterion = copy.deepcopy(criterion)
    student_out = {name: v.detach().clone().requires_grad_() for name, v in student_out.items()}
    device = labels.device.type
    with torch.random.fork_rng(devices=[labels.device] if device == "cuda" else []):
        torch.manual_seed(0)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            if term_in_autocast:  # bypass the criterion's fp32 block: the term straight under autocast
                value = sum(criterion.term_values(student_out, teacher_out, labels, images).values())
            else:
                value, _ = criterion(student_out, teacher_out, labels, images)
    value = value.float()
    value.backward()
    grads = [v.grad.float().flatten() for v in student_out.values() if v.grad is not None]
    return value.item(), torch.cat(grads)


def relative(a, reference) -> float:
    if isinstance(a, torch.Tensor):
        return float((a - reference).norm() / reference.norm().clamp_min(1e-30))
    return abs(a - reference) / max(abs(reference), 1e-30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_arguments(parser, "default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--trained", action="store_true", help="the profile's trained teacher and baseline student")
    parser.add_argument("--out", default="benchmarks/results/loss_precision.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    profile = sized_profile(args)
    device = resolve_device(args.device)
    k = dataset_spec(profile.data).num_classes
    if args.trained:  # the registered profile's runs: the batch and crop overrides change no weights
        teacher, _ = runs.ensure_teacher(args.profile, progress=False)
        student = runs.load_students(args.profile, ["baseline"], seed=0)["baseline"]
    else:
        student, teacher = build_segmentor(profile.student, k), build_segmentor(profile.teacher, k)
    student = student.to(device).train()
    teacher = teacher.to(device).eval().requires_grad_(False)
    criteria = {term: DistillationCriterion(loss_config(args, "baseline", ((term, 1.0), ("ce", 0.0))), k,
                                            student.feature_channels, teacher.feature_channels).to(device)
                for term in sorted(set(TERM_BUILDERS) - {"ce"})}
    errors: dict[str, dict[str, list[float]]] = {
        term: {key: [] for key in ("value_fp32_term", "value_bf16_term", "grad_fp32_term", "grad_bf16_term")}
        for term in criteria}
    for _ in range(args.batches):
        images, labels = random_batch(profile, k, device)
        with torch.no_grad():  # fp32 networks; their outputs rounded to bf16 stand for the bf16 networks'
            teacher_out, student_out = teacher(images), student(images)
        rounded = [{name: v.bfloat16() for name, v in out.items()} for out in (teacher_out, student_out)]
        for term, criterion in criteria.items():
            ready_for_timing(criterion, teacher_out)
            reference = evaluate(criterion, student_out, teacher_out, labels, images, amp=False, term_in_autocast=False)
            for setting, in_autocast in (("fp32_term", False), ("bf16_term", True)):
                value, grad = evaluate(criterion, rounded[1], rounded[0], labels, images, amp=True,
                                       term_in_autocast=in_autocast)
                errors[term][f"value_{setting}"].append(relative(value, reference[0]))
                errors[term][f"grad_{setting}"].append(relative(grad, reference[1]))
    rows = [{"term": term, **{key: statistics.median(v) for key, v in errs.items()}} for term, errs in errors.items()]
    summary = {"profile": profile.name, "device": device_name(device), "batch": profile.data.batch_size,
               "batches": args.batches, "trained": args.trained, "rows": rows}
    print(f"device: {summary['device']}  profile: {profile.name}  batch {summary['batch']}  "
          f"{'trained' if args.trained else 'fresh'} networks  medians over {args.batches} batches; "
          f"relative error against fp32 outputs and terms")
    print(f"{'term':<10}{'value, fp32 term':>18}{'value, bf16 term':>18}{'grad, fp32 term':>18}{'grad, bf16 term':>18}")
    for row in rows:
        print(f"{row['term']:<10}{row['value_fp32_term']:>18.1e}{row['value_bf16_term']:>18.1e}"
              f"{row['grad_fp32_term']:>18.1e}{row['grad_bf16_term']:>18.1e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
