"""Runs of a profile: the cached teacher and one student run per (method, seed, overrides).

Run folders are named by the digest of their resolved config, so a changed option never reuses
or overwrites an earlier result, and a repeated call with the same config returns the finished
result at once.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import distributed
from .analysis import TeacherAgreement
from .config import PROFILES, LossConfig, Profile, RunConfig, apply_overrides, get_profile
from .data.datasets import build_dataset, dataset_spec
from .engine import RESULT, load_model, train
from .losses import get_method, method_weights
from .models import Segmentor
from .paths import cache_root, profile_dir


def teacher_dir(profile: Profile) -> Path:
    return cache_root() / "teachers" / f"teacher-{profile.teacher_config().digest()}"


def launch_torchrun(profile: Profile, nproc: int, arguments: list[str]) -> None:
    """Run :mod:`idd_lib.launch` data-parallel in ``nproc`` local processes (``torchrun --standalone``);
    its output is echoed when it ends, and a failure raises with the launcher's error line."""
    if nproc < 1:
        raise ValueError(f"nproc: expected a number of processes >= 1, got {nproc}")
    if PROFILES.get(profile.name) != profile:
        raise ValueError(f"nproc: data-parallel runs start from a registered profile ({sorted(PROFILES)}); "
                         f"{profile.name!r} is not one (set options instead of editing the profile)")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "idd_lib.launch", "--profile", profile.name, "--no-progress", *arguments]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode:
        lines = done.stderr.strip().splitlines() or ["(no error output)"]
        reason = next((line for line in lines if line.startswith("error:")), lines[-1])
        raise RuntimeError(f"torchrun with {nproc} processes failed (exit {done.returncode}): {reason}")


def ensure_teacher(profile: Profile | str, progress: bool = True, nproc: int = 1) -> tuple[Segmentor, dict[str, Any]]:
    """Train the profile's teacher once (cached by its config digest) and return it with its result;
    ``nproc`` > 1 trains it data-parallel in that many processes (torchrun)."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    cfg = profile.teacher_config()
    folder = teacher_dir(profile)
    if nproc != 1 and not (folder / RESULT).exists() and not distributed.active():
        launch_torchrun(profile, nproc, ["--method", "teacher"])
    result = train(cfg, folder, progress=progress, extra={"role": "teacher", "profile": profile.name})
    return load_model(folder, cfg), result


def student_config(profile: Profile, method: str, seed: int, weights: dict[str, float] | None = None,
                   options: dict[str, str] | None = None) -> RunConfig:
    get_method(method)
    cfg = profile.run_config(method, seed)
    cfg = dataclasses.replace(cfg, loss=LossConfig(method=method, weights=tuple(sorted((weights or {}).items()))))
    cfg = apply_overrides(cfg, options or {})
    method_weights(cfg.loss)  # validates weight names and values before any work
    return cfg


def override_tag(weights: dict[str, float] | None, options: dict[str, str] | None) -> str:
    """A readable label for a run with non-default weights/options (``idd=10,idd.metric=cosine``)."""
    parts = [f"{k}={v:g}" for k, v in sorted((weights or {}).items())]
    parts += [f"{k.removeprefix('loss.')}={v}" for k, v in sorted((options or {}).items())]
    return ",".join(parts)


def run_dir(profile: Profile, cfg: RunConfig, tag: str = "") -> Path:
    label = f"{cfg.loss.method}{'-' + tag if tag else ''}-s{cfg.train.seed}-{cfg.digest()[:8]}"
    return profile_dir(profile.name) / "runs" / label


def run_student(profile: Profile | str, method: str, seed: int = 0, weights: dict[str, float] | None = None,
                options: dict[str, str] | None = None, tag: str = "", progress: bool = True,
                nproc: int = 1) -> dict[str, Any]:
    """Train one student of ``profile`` with ``method`` (teacher trained first if not cached);
    ``nproc`` > 1 trains both data-parallel in that many local processes (torchrun)."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    cfg = student_config(profile, method, seed, weights, options)
    tag = tag or override_tag(weights, options)
    folder = run_dir(profile, cfg, tag)
    if nproc != 1 and not (folder / RESULT).exists() and not distributed.active():
        launch_torchrun(profile, nproc, ["--method", method, "--seed", str(seed), "--tag", tag,
                                         "--weights", ",".join(f"{k}={v}" for k, v in (weights or {}).items()),
                                         "--options", ",".join(f"{k}={v}" for k, v in (options or {}).items())])
    if (folder / RESULT).exists():
        return json.loads((folder / RESULT).read_text())
    # Every method gets the teacher: it is also the reference of the agreement-over-training curve.
    teacher, _ = ensure_teacher(profile, progress)
    agreement = TeacherAgreement(teacher, build_dataset(cfg.data, "val", train=False),
                                 dataset_spec(cfg.data).num_classes, profile.analysis_images)
    extra = {"profile": profile.name, "tag": tag, "weights_override": weights or {}, "options": options or {}}
    return train(cfg, folder, teacher, progress=progress, extra=extra, on_evaluate=agreement)


def collect_results(profile: Profile | str) -> list[dict[str, Any]]:
    """Every finished student run of a profile, read from its run folders."""
    name = profile if isinstance(profile, str) else profile.name
    return [json.loads(p.read_text()) for p in sorted((profile_dir(name) / "runs").glob(f"*/{RESULT}"))]


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    """The JSON lines a run logged (training rows and validation rows)."""
    path = Path(folder) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def load_students(profile: Profile | str, methods: list[str], seed: int) -> dict[str, Segmentor]:
    """Trained students of the default-weight runs of ``methods`` for one seed."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    configs = {method: student_config(profile, method, seed) for method in methods}
    folders = {method: run_dir(profile, cfg) for method, cfg in configs.items()}
    missing = [method for method, folder in folders.items() if not (folder / RESULT).exists()]
    if missing:  # every missing run at once, so one 03_ablation call makes them all
        raise FileNotFoundError(f"no finished run of {missing} for seed {seed} in {profile_dir(profile.name) / 'runs'}; "
                                f"run 03_ablation with profile={profile.name!r} first")
    return {method: load_model(folders[method], cfg) for method, cfg in configs.items()}
