"""Train one run of a profile from the command line; the entry point ``torchrun`` starts per rank.

    python -m idd_lib.launch --profile quick --method idd --seed 0
    torchrun --standalone --nproc_per_node 2 -m idd_lib.launch --profile quick --method idd
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29400 \\
        -m idd_lib.launch --profile paper-cityscapes --method idd --options "data.root=/data/cityscapes"

``--method teacher`` trains only the profile's teacher (it takes ``data.*``, ``teacher.*`` and
``teacher_train.*`` options); a student run trains its teacher first when it is not cached
(data-parallel too), the one of the student's data and ``teacher*`` options.
``--profile-options`` applies options to the whole profile (what the notebooks' ``options`` do). Rank 0 prints the result's summary as one JSON line. Every
node must see the same results folder (``$IDD_RESULTS``): rank 0 writes it, the others read
the teacher from it.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch.distributed as dist

from . import distributed
from .config import parse_assignments, parse_weights
from .presets import study_profile

SUMMARY_KEYS = ("method", "seed", "steps", "miou", "wall_time_s", "run_dir")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--method", default="idd", help="a registered method, or 'teacher'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="", help='loss-weight overrides, e.g. "idd=10,kd=1"')
    parser.add_argument("--options", default="", help='config overrides, e.g. "train.iterations=100"')
    parser.add_argument("--profile-options", default="", help='options of the whole profile, e.g. "data.root=/data"')
    parser.add_argument("--tag", default="")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from . import runs  # after argument parsing: --help stays fast

    distributed.init_from_env()
    rank0 = distributed.is_main()
    try:
        profile = study_profile(args.profile, args.profile_options)
        options = parse_assignments(args.options, "options")
        if args.method == "teacher":
            result = runs.ensure_teacher(profile, not args.no_progress, options=options)[1]
        else:
            result = runs.run_student(profile, args.method, args.seed, parse_weights(args.weights), options, args.tag,
                                      not args.no_progress)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        if rank0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank0:
        print(json.dumps({key: result.get(key) for key in SUMMARY_KEYS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
