"""How much of DIST_KD's loss the study's ``dist`` term leaves out: the auxiliary-head part.

DIST_KD's segmentation trainer forces ``--aux`` on for ResNet students and adds
``0.4 * DIST(aux_S, aux_T)`` to ``DIST(out_S, out_T)``; the study's ``dist`` distils the main
logits only (its teachers run in eval mode, without their auxiliary head's output). This script
loads a finished ``dist`` run and the profile's teacher, runs both networks' main and auxiliary
heads on val images and reports the two terms and DIST_KD's total as a multiple of ours.

    .venv/bin/python benchmarks/dist_aux_share.py --profile default --seed 0   # after make tune
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from idd_lib.config import DISTConfig
from idd_lib.data.datasets import build_dataset, eval_loader
from idd_lib.engine import load_model
from idd_lib.losses import DISTLoss
from idd_lib.presets import get_profile
from idd_lib.rundir import RESULT
from idd_lib.runs import ensure_teacher, run_dir, student_config

AUX_FACTOR = 0.4   # DIST_KD train_kd.py: kd_loss += 0.4 * lambda_kd * criterion_kd(aux_S, aux_T)


def heads(net, images):
    """The main and auxiliary logits of a network in eval mode."""
    c3, c4 = net.backbone(images)
    return net.classifier(net.head(c4)), net.aux(c3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/dist_aux_share.json")
    args = parser.parse_args()
    profile = get_profile(args.profile)
    cfg = student_config(profile, "dist", args.seed, check=False)
    folder = run_dir(profile, cfg)
    if not (folder / RESULT).exists():
        raise SystemExit(f"error: {folder}: no finished dist run of seed {args.seed}; run make tune first")
    student, (teacher, _) = load_model(folder, cfg).eval(), ensure_teacher(profile, progress=False)
    term, main_terms, aux_terms = DISTLoss(DISTConfig()), [], []
    with torch.no_grad():
        for images, labels in eval_loader(build_dataset(profile.data, "val", train=False), max_images=args.images):
            (s_out, s_aux), (t_out, t_aux) = heads(student, images), heads(teacher.eval(), images)
            main_terms.append(term({"out": s_out}, {"out": t_out}, labels).item())
            aux_terms.append(term({"out": s_aux}, {"out": t_aux}, labels).item())
    main_value, aux_value = sum(main_terms) / len(main_terms), sum(aux_terms) / len(aux_terms)
    summary = {"profile": profile.name, "seed": args.seed, "images": args.images, "dist_main": main_value,
               "dist_aux": aux_value, "aux_factor": AUX_FACTOR,
               "dist_kd_over_ours": (main_value + AUX_FACTOR * aux_value) / main_value}
    print(f"DIST on the main logits {main_value:.4f}, on the auxiliary logits {aux_value:.4f}: "
          f"DIST_KD's loss is {summary['dist_kd_over_ours']:.2f} x the study's")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
