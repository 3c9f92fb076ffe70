"""Retrain, ship and check the shipped teachers.

    python -m idd_lib.teachers train --profile default [--retrain]  # make teacher [RETRAIN=1]: from scratch, into the cache
    python -m idd_lib.teachers ship --profile default    # make ship-teacher: cache folder -> idd_lib/teachers/default/
    python -m idd_lib.teachers check                     # every shipped teacher's files against its manifest

``--prior P`` does the same for the teacher of the position-prior sweep at ``P`` (shipped as
``idd_lib/teachers/<profile>-prior<P>/``; at prior 1 the sweep uses the profile's own teacher).
"""
from __future__ import annotations

import argparse
import shutil
import sys

from . import MANIFEST, ShippedTeacherError, check_artifact, is_installed_copy, read_manifest, ship, teachers_root


def resolve(profile_name: str, options: str | dict[str, str], prior: float | None):
    """The profile whose teacher is meant, and its shipped folder's name: the profile's own, or its
    prior sweep's copy at ``prior``."""
    from ..config import parse_assignments
    from ..presets import get_profile

    options = parse_assignments(options, "options") if isinstance(options, str) else options
    profile = get_profile(profile_name).configure(options)
    if prior is None:
        return profile, profile_name
    return profile.sweep_profile(prior), f"{profile_name}-prior{prior:g}"


def train(profile_name: str, options: str, retrain: bool = False, prior: float | None = None) -> None:
    """Train the profile's teacher here, never from the shipped file: an installed copy of the
    shipped teacher in the cache is removed first (the package can install it again at any time);
    a teacher already trained here is kept, unless ``retrain`` (then it is trained again from scratch)."""
    from ..rundir import RESULT, read_result
    from ..runs import ensure_teacher, teacher_dir

    profile, _ = resolve(profile_name, options, prior)
    folder = teacher_dir(profile)
    if folder.exists() and (retrain or is_installed_copy(folder)):
        what = "the installed copy of the shipped teacher" if is_installed_copy(folder) else "the earlier teacher"
        print(f"teacher: removing {folder}, {what}, to train it here from scratch", flush=True)
        shutil.rmtree(folder)
    elif (folder / RESULT).exists():
        print(f"teacher: already trained here (val mIoU {read_result(folder)['miou']:.2f}) in {folder}; "
              "--retrain (make teacher RETRAIN=1) trains it again", flush=True)
        return
    result = ensure_teacher(profile, use_shipped=False)[1]
    print(f"teacher: val mIoU {result['miou']:.2f} after {result['steps']} steps ({result['wall_time_s']:.0f} s) "
          f"in {folder}", flush=True)


def ship_profile(profile_name: str, options: str, prior: float | None = None) -> None:
    from ..provenance import git_state
    from ..runs import teacher_dir

    profile, name = resolve(profile_name, options, prior)
    target = ship(profile.teacher_config(), teacher_dir(profile), name, options=dict(profile.options),
                  base=(profile_name, prior))
    manifest = read_manifest(target / MANIFEST)
    size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    print(f"shipped: {target} ({size:.1f} MiB): teacher {manifest['config_digest']}, val mIoU "
          f"{manifest['metrics']['miou']:.2f}, trained at commit {str(manifest['commit'])[:10]}", flush=True)
    if manifest["dirty"] or git_state()["dirty"]:
        print("warning: the teacher was trained or shipped from a tree with uncommitted changes; commit first "
              "so its commit names the code that trained it", file=sys.stderr)


def check_all() -> int:
    """Check every shipped teacher against the config its profile resolves to today."""
    found = sorted(teachers_root().glob(f"*/{MANIFEST}"))
    for path in found:
        manifest = read_manifest(path)
        base = manifest.get("base_profile", manifest["profile"])
        cfg = resolve(base, manifest.get("options") or {}, manifest.get("prior"))[0].teacher_config()
        if cfg.digest() != manifest["config_digest"]:
            print(f"{path.parent}: teacher {manifest['config_digest']}, but profile {manifest['profile']!r} now "
                  f"resolves to {cfg.digest()}: it will not be used; retrain and re-ship it")
            continue
        check_artifact(path.parent, cfg)
        print(f"{path.parent}: ok (teacher {cfg.digest()}, val mIoU {manifest['metrics']['miou']:.2f})")
    if not found:
        print(f"no shipped teachers in {teachers_root()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m idd_lib.teachers", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("train", "ship", "check"))
    parser.add_argument("--profile", default="default", help="the profile whose teacher to train or ship")
    parser.add_argument("--options", default="", help="profile options (data.*, teacher.*, teacher_train.*)")
    parser.add_argument("--retrain", action="store_true", help="train: also replace a teacher already trained here")
    parser.add_argument("--prior", type=float, default=None,
                        help="the teacher of the profile's position-prior sweep at this prior")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            train(args.profile, args.options, args.retrain, args.prior)
        elif args.command == "ship":
            ship_profile(args.profile, args.options, args.prior)
        else:
            return check_all()
    except (ShippedTeacherError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
