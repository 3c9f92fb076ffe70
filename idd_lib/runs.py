"""Runs of a profile: the cached teacher and one student run per (method, seed, overrides).

Run folders are named by the digest of their resolved config, so a changed option never reuses
or overwrites an earlier result, and a repeated call with the same config returns the finished
result at once. A student's teacher is derived from the student's resolved config (its data,
``teacher.*`` and ``teacher_train.*``), so the options of a run also select its teacher.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .analysis import TeacherAgreement
from .config import LossConfig, Profile, RunConfig, apply_overrides, check_limits, teacher_of, variant_digest
from .data.datasets import build_dataset, dataset_root, dataset_spec
from .engine import load_model, resolve_device, train
from .inference import check_eval_config
from .losses import DistillationCriterion, get_method, method_weights
from .models import Segmentor, build_segmentor
from .models.pretrained import require_weights_file
from .paths import cache_root, profile_dir
from .presets import PROFILES, get_profile
from .rundir import RESULT, RunFileError, read_metrics, read_result  # noqa: F401  (read_metrics: notebooks' name)
from .teachers import install_shipped

# The options a teacher takes: everything else configures the student's run.
TEACHER_OPTIONS = ("data.", "teacher.", "teacher_train.")


def _profile(profile: Profile | str) -> Profile:
    return get_profile(profile) if isinstance(profile, str) else profile


def teacher_dir(teacher: RunConfig | Profile | str) -> Path:
    """The cache folder of a teacher config (or of a profile's teacher), named by its digest."""
    cfg = teacher if isinstance(teacher, RunConfig) else _profile(teacher).teacher_config()
    return cache_root() / "teachers" / f"teacher-{cfg.digest()}"


def check_run(cfg: RunConfig) -> None:
    """Every option of ``cfg`` checked before any work: numeric ranges, the device, the dataset and
    its folder, and the networks and loss terms built on the meta device (their constructors check
    their choices), so a bad option is a one-line error naming it, not a traceback mid-run."""
    check_limits(cfg)
    resolve_device(cfg.train.device)
    check_eval_config(cfg.train.eval)
    if cfg.data.dataset != "synthetic" or cfg.data.root:
        root = dataset_root(cfg.data)
        if not root.is_dir():
            raise ValueError(f"data.root: {root} {'is not a folder' if root.exists() else 'does not exist'}; "
                             f"expected the {cfg.data.dataset} dataset folder")
    for option, network in (("model", cfg.model), ("teacher", cfg.teacher)):
        if network is not None and network.pretrained not in ("", "imagenet"):
            require_weights_file(network.pretrained, f"{option}.pretrained")
    num_classes = dataset_spec(cfg.data).num_classes
    with torch.device("meta"):
        student = build_segmentor(cfg.model, num_classes)
        teacher = build_segmentor(cfg.teacher, num_classes) if cfg.teacher is not None else None
        DistillationCriterion(cfg.loss, num_classes, student.feature_channels,
                              teacher.feature_channels if teacher is not None else None)


def launch_torchrun(profile: Profile, nproc: int, arguments: list[str]) -> None:
    """Run :mod:`idd_lib.launch` data-parallel in ``nproc`` local processes (``torchrun --standalone``);
    its output is echoed when it ends, and a failure raises with the launcher's error line."""
    if nproc < 1:
        raise ValueError(f"nproc: expected a number of processes >= 1, got {nproc}")
    registered = PROFILES.get(profile.name)
    if registered is None or registered.configure(dict(profile.options)) != profile:
        raise ValueError(f"nproc: data-parallel runs start from a registered profile and its options; "
                         f"{profile.name!r} is not one (set options instead of editing the profile)")
    done = subprocess.run(torchrun_command(profile, nproc, arguments), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode:
        lines = done.stderr.strip().splitlines() or ["(no error output)"]
        reason = next((line for line in lines if line.startswith("error:")), lines[-1])
        raise RuntimeError(f"torchrun with {nproc} processes failed (exit {done.returncode}): {reason}")


def torchrun_command(profile: Profile, nproc: int, arguments: list[str]) -> list[str]:
    """The command of a data-parallel run: ``torchrun --standalone`` starting :mod:`idd_lib.launch`
    in ``nproc`` processes (one per GPU of the node or the Slurm job)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "idd_lib.launch", "--profile", profile.name, "--no-progress",
            "--profile-options", join_options(dict(profile.options)), *arguments]


def join_options(options: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items())


def ensure_teacher(profile: Profile | str, progress: bool = True, nproc: int = 1,
                   options: dict[str, str] | None = None, use_shipped: bool = True) -> tuple[Segmentor, dict[str, Any]]:
    """Train the teacher of ``profile`` with ``options`` (``data.*``, ``teacher.*``,
    ``teacher_train.*``) once, cached by its config digest, and return it with its result;
    ``nproc`` > 1 trains it data-parallel in that many processes (torchrun). A shipped teacher of
    the same config digest (:mod:`idd_lib.teachers`) is installed instead of training, unless
    ``use_shipped`` is False."""
    profile, options = _profile(profile), options or {}
    wrong = [key for key in options if not key.startswith(TEACHER_OPTIONS)]
    if wrong:
        raise ValueError(f"options: {wrong[0]} does not apply to a teacher; a teacher takes "
                         f"{', '.join(g + '*' for g in TEACHER_OPTIONS)} options")
    cfg = teacher_of(apply_overrides(profile.run_config(), options))
    check_run(cfg)
    return _teacher(profile, cfg, options, progress, nproc, use_shipped)


def _teacher(profile: Profile, cfg: RunConfig, options: dict[str, str], progress: bool,
             nproc: int, use_shipped: bool = True) -> tuple[Segmentor, dict[str, Any]]:
    folder = teacher_dir(cfg)
    if use_shipped and not distributed.active():  # torchrun's ranks find it installed by their launcher
        install_shipped(cfg, folder)
    if nproc != 1 and not (folder / RESULT).exists() and not distributed.active():
        launch_torchrun(profile, nproc, ["--method", "teacher", "--options", join_options(options)])
    result = train(cfg, folder, progress=progress, extra={"role": "teacher", "profile": profile.name})
    return load_model(folder, cfg), result


def student_config(profile: Profile, method: str, seed: int, weights: dict[str, float] | None = None,
                   options: dict[str, str] | None = None, check: bool = True) -> RunConfig:
    """The resolved config of one student run; ``check``: every option checked (:func:`check_run`),
    which reading finished runs skips (their dataset folder may have moved since)."""
    get_method(method)
    cfg = profile.run_config(method, seed)
    cfg = dataclasses.replace(cfg, loss=LossConfig(method=method, weights=tuple(sorted((weights or {}).items()))))
    cfg = apply_overrides(cfg, options or {})
    method_weights(cfg.loss)  # validates weight names and values before any work
    if check:
        check_run(cfg)
    return cfg


def _exact(value: float) -> str:
    """The shortest text that reads back as ``value`` (``10``, ``5.0000001``)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def override_tag(weights: dict[str, float] | None, options: dict[str, str] | None) -> str:
    """A readable label for a run with non-default weights/options (``idd=10,idd.metric=cosine``);
    weights are written exactly, so two different weights never share a label."""
    parts = [f"{k}={_exact(v)}" for k, v in sorted((weights or {}).items())]
    parts += [f"{k.removeprefix('loss.')}={v}" for k, v in sorted((options or {}).items())]
    return ",".join(parts)


def folder_label(cfg: RunConfig, tag: str = "") -> str:
    """A run folder's name: method, a short safe form of the tag, seed and the config digest. Only
    letters, digits and ``.=+,_-`` (never a path separator), at most 40 characters of tag."""
    safe = re.sub(r"[^A-Za-z0-9.=+,_-]+", "_", tag).strip("._")[:40].rstrip("._")
    return f"{cfg.loss.method}{'-' + safe if safe else ''}-s{cfg.train.seed}-{cfg.digest()}"


def run_dir(profile: Profile, cfg: RunConfig, tag: str = "") -> Path:
    """The folder of ``cfg``'s run: the existing one with its digest (whatever its label), else a new one."""
    runs = profile_dir(profile.name) / "runs"
    existing = sorted(runs.glob(f"*-{cfg.digest()}")) if runs.is_dir() else []
    return existing[0] if existing else runs / folder_label(cfg, tag)


def run_student(profile: Profile | str, method: str, seed: int = 0, weights: dict[str, float] | None = None,
                options: dict[str, str] | None = None, tag: str = "", progress: bool = True,
                nproc: int = 1) -> dict[str, Any]:
    """Train one student of ``profile`` with ``method`` (its teacher trained first if not cached);
    ``nproc`` > 1 trains both data-parallel in that many local processes (torchrun)."""
    profile = _profile(profile)
    cfg = student_config(profile, method, seed, weights, options)
    tag = tag or override_tag(weights, options)
    folder = run_dir(profile, cfg, tag)
    if nproc != 1 and not (folder / RESULT).exists() and not distributed.active():
        launch_torchrun(profile, nproc, ["--method", method, "--seed", str(seed), "--tag", tag,
                                         "--weights", ",".join(f"{k}={v!r}" for k, v in (weights or {}).items()),
                                         "--options", join_options(options or {})])
    if (folder / RESULT).exists():
        result = read_result(folder)
        if result.get("tag", "") != tag:
            warnings.warn(f"{folder}: this configuration already ran as {result.get('tag') or result['method']!r}; "
                          f"its result is returned, under that label (not {tag!r})", stacklevel=2)
        return result
    # Every method gets the teacher: it is also the reference of the agreement-over-training curve.
    teacher_options = {k: v for k, v in (options or {}).items() if k.startswith(TEACHER_OPTIONS)}
    teacher, _ = _teacher(profile, teacher_of(cfg), teacher_options, progress, nproc=1)
    agreement = TeacherAgreement(teacher, build_dataset(cfg.data, "val", train=False),
                                 dataset_spec(cfg.data).num_classes, profile.analysis_images)
    extra = {"profile": profile.name, "tag": tag, "weights_override": weights or {}, "options": options or {},
             "variant": variant_digest(cfg), "teacher": teacher_of(cfg).digest()}
    return train(cfg, folder, teacher, progress=progress, extra=extra, on_evaluate=agreement)


def collect_results(profile: Profile | str) -> list[dict[str, Any]]:
    """Every finished student run of a profile, read from its run folders; a damaged result file
    is skipped with a warning naming it."""
    name = profile if isinstance(profile, str) else profile.name
    results = []
    for path in sorted((profile_dir(name) / "runs").glob(f"*/{RESULT}")):
        try:
            results.append(read_result(path.parent))
        except RunFileError as err:
            warnings.warn(f"skipped a run: {err}", stacklevel=2)
    return results


def load_students(profile: Profile | str, methods: list[str], seed: int) -> dict[str, Segmentor]:
    """Trained students of the default-weight runs of ``methods`` for one seed."""
    profile = _profile(profile)
    configs = {method: student_config(profile, method, seed) for method in methods}
    folders = {method: run_dir(profile, cfg) for method, cfg in configs.items()}
    missing = [method for method, folder in folders.items() if not (folder / RESULT).exists()]
    if missing:  # every missing run at once, so one 03_ablation call makes them all
        raise FileNotFoundError(f"no finished run of {missing} for seed {seed} in {profile_dir(profile.name) / 'runs'}; "
                                f"run 03_ablation with profile={profile.name!r} first")
    return {method: load_model(folders[method], cfg) for method, cfg in configs.items()}
