"""Sweep throughput: runs/hour of a grid for each executor setting (workers x torch threads), in one run.

Each setting trains the same grid into its own fresh results folder; the teacher and the generated
data are trained once beforehand and copied into each folder (a profile trains them once, whatever
the executor). Per run the table splits the time into training (``train()``'s own wall time) and
overhead: setting up the run in its process (checks, teacher load, agreement reference) and
starting that process (a Jupyter kernel for ``inline``, a Python worker for ``local``).

    .venv/bin/python benchmarks/sweep_throughput.py --profile default                   # the README's table
    .venv/bin/python benchmarks/sweep_throughput.py --options train.iterations=60,teacher_train.iterations=100
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from idd_lib import runs, study, sweep
from idd_lib.presets import study_profile
from idd_lib.rundir import read_result

SETTINGS = ("inline:1x2", "local:1x2", "local:2x1")


def parse_setting(text: str) -> tuple[str, int, int]:
    executor, _, shape = text.partition(":")
    workers, _, threads = shape.partition("x")
    return executor, int(workers), int(threads)


def measure(profile, grid, setting: str, folder: Path, cache: Path) -> dict:
    executor, workers, threads = parse_setting(setting)
    shutil.copytree(cache, folder / "cache")
    os.environ["IDD_RESULTS"] = str(folder)
    started = time.perf_counter()
    table = sweep.run_sweep(profile, grid, executor, workers, threads, progress=False)
    wall = time.perf_counter() - started
    if (table["state"] != "done").any():
        raise SystemExit(f"{setting}: runs did not finish:\n{table.to_string(index=False)}")
    training = [read_result(sweep.run_folder(profile, run))["wall_time_s"] for run in grid]
    in_process = list(table["wall_s"])
    runs_count = len(grid)
    return {"setting": setting, "executor": executor, "workers": workers, "threads": threads, "runs": runs_count,
            "wall_s": round(wall, 1), "runs_per_hour": round(runs_count / wall * 3600, 1),
            "train_s_per_run": round(sum(training) / runs_count, 1),
            "setup_s_per_run": round((sum(in_process) - sum(training)) / runs_count, 1),
            "process_s_per_run": round((wall * workers - sum(in_process)) / runs_count, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--options", default="", help="profile options, e.g. train.iterations=60 for a short run")
    parser.add_argument("--methods", default="baseline,kd,idd,idd+pid")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="executor:workersxthreads, comma-separated")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sweep_throughput.json")
    args = parser.parse_args()
    profile = study_profile(args.profile, args.options)
    grid = study.ablation_grid(profile, args.methods, args.seeds)
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as scratch:
        os.environ["IDD_RESULTS"] = str(Path(scratch) / "teacher")
        started = time.perf_counter()
        runs.ensure_teacher(profile, progress=False)
        teacher_s = time.perf_counter() - started
        cache = Path(scratch) / "teacher" / "cache"
        rows = [measure(profile, grid, setting, Path(scratch) / setting.replace(":", "-"), cache)
                for setting in args.settings.split(",")]
    summary = {"profile": profile.name, "options": args.options, "grid": f"{args.methods} x seeds {args.seeds}",
               "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "teacher_s": round(teacher_s, 1), "settings": rows}
    print(f"profile {profile.name} ({args.options or 'as preset'}), {len(grid)} runs, {os.cpu_count()} CPUs; "
          f"teacher once: {teacher_s:.0f} s")
    header = ("runs/hour", "wall s", "train s/run", "setup s/run", "process s/run")
    print(f"{'setting':<12} " + " ".join(f"{name:>13}" for name in header))
    for row in rows:
        values = (row["runs_per_hour"], row["wall_s"], row["train_s_per_run"], row["setup_s_per_run"],
                  row["process_s_per_run"])
        print(f"{row['setting']:<12} " + " ".join(f"{value:>13}" for value in values))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
