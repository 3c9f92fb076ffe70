"""Shipped teachers: a profile's trained teacher carried by the package, used instead of training it.

Every distillation study starts from a fixed teacher. ``idd_lib/teachers/<profile>/`` holds one
trained by this project's code: ``model.pt`` (its weights), ``metrics.jsonl`` (its training log)
and ``manifest.json`` (its config digest and full resolved config, the commit, machine and package
versions it was trained with, its validation mIoU and per-class IoU, its wall time, and the sha256
of each file). When a run needs a teacher whose cache folder holds no finished (or interrupted)
training and a shipped teacher has that config digest, :func:`install_shipped` checks the artifact
(the digest recomputed from its config, each file's sha256, the weights loaded with
``weights_only=True`` into the configured network) and installs it into the cache folder, its
provenance saying where it came from. Any other teacher config (a ``teacher_train.*`` or ``data.*``
option) has another digest and trains as before.

``python -m idd_lib.teachers train`` retrains a profile's teacher from scratch and ``ship`` writes
the artifact from that cache folder (``make teacher``, ``make ship-teacher``); docs/reproducibility.md.
``$IDD_TEACHERS`` names another folder of shipped teachers (the tests' own).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

from ..config import RunConfig, fields_digest
from ..data.datasets import dataset_spec
from ..models import build_segmentor
from ..provenance import git_state, machine_facts
from ..rundir import (CHECKPOINT, CONFIG, METRICS, MODEL, PROVENANCE, RESULT, RunFileError, atomic_write_text,
                      load_state, now, read_json, read_provenance, read_result, relative_location, staged_folder)

MANIFEST = "manifest.json"
FILES = (MODEL, METRICS)  # what ships besides the manifest; config.json, provenance.json, result.json come from it
FORMAT = 1
REQUIRED = ("format", "profile", "config_digest", "config", "result", "provenance", "files")
RETRAIN = "retrain and re-ship it (make teacher, then make ship-teacher) or restore the file from git"


class ShippedTeacherError(ValueError):
    """A shipped teacher that cannot be used as it is; the message names the file and what was expected."""


def teachers_root() -> Path:
    """Where shipped teachers are looked up: ``$IDD_TEACHERS``, else this package folder."""
    env = os.environ.get("IDD_TEACHERS")
    return Path(env).resolve() if env else Path(__file__).resolve().parent


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    """A shipped teacher's manifest with every required field, else a one-line error naming it."""
    try:
        manifest = read_json(path, RETRAIN)
    except (OSError, RunFileError) as err:
        raise ShippedTeacherError(str(err) if isinstance(err, RunFileError) else f"{path}: unreadable ({err})") from None
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise ShippedTeacherError(f"{path}: no {', '.join(missing)}; expected a manifest written by "
                                  f"'python -m idd_lib.teachers ship'; {RETRAIN}")
    if manifest["format"] != FORMAT:
        raise ShippedTeacherError(f"{path}: format {manifest['format']!r}; this code reads format {FORMAT}")
    return manifest


def find_shipped(digest: str, root: Path | None = None) -> Path | None:
    """The shipped teacher folder whose manifest records ``digest`` or whose config has it; a
    manifest that cannot be read is skipped with a warning naming it."""
    for path in sorted((root or teachers_root()).glob(f"*/{MANIFEST}")):
        try:
            manifest = read_manifest(path)
            recorded = fields_digest(manifest["config"]) if isinstance(manifest["config"], dict) else None
        except ShippedTeacherError as err:
            warnings.warn(f"skipped a shipped teacher: {err}", stacklevel=2)
            continue
        if digest in (manifest["config_digest"], recorded):
            return path.parent
    return None


def check_artifact(folder: Path, cfg: RunConfig) -> dict[str, Any]:
    """The manifest of the shipped teacher in ``folder`` after checking it is ``cfg``'s teacher:
    its recorded digest is its config's and ``cfg``'s, each file has its recorded sha256, and the
    weights load (``weights_only``) into ``cfg.model``. Any mismatch is a one-line error."""
    path = folder / MANIFEST
    manifest = read_manifest(path)
    recorded, expected = manifest["config_digest"], cfg.digest()
    actual = fields_digest(manifest["config"]) if isinstance(manifest["config"], dict) else "none"
    if recorded != actual:
        raise ShippedTeacherError(f"{path}: config_digest {recorded} does not match its config (digest {actual}); "
                                  f"expected the digest of the config it records; {RETRAIN}")
    if recorded != expected:
        raise ShippedTeacherError(f"{path}: a teacher of config {recorded}; expected config {expected}")
    for name in FILES:
        want = manifest["files"].get(name) if isinstance(manifest["files"], dict) else None
        if not (folder / name).is_file():
            raise ShippedTeacherError(f"{folder / name}: missing; expected the file the manifest lists; {RETRAIN}")
        got = file_sha256(folder / name)
        if got != want:
            raise ShippedTeacherError(f"{folder / name}: sha256 {got[:16]}... does not match the manifest's "
                                      f"{str(want)[:16]}...; {RETRAIN}")
    _check_weights(folder / MODEL, cfg)
    return manifest


def _check_weights(path: Path, cfg: RunConfig) -> None:
    model = build_segmentor(cfg.model, dataset_spec(cfg.data).num_classes)
    try:
        model.load_state_dict(load_state(path))
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        reason = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise ShippedTeacherError(f"{path}: not the weights of the configured teacher network ({reason}); "
                                  f"{RETRAIN}") from None


def install_shipped(cfg: RunConfig, folder: Path, root: Path | None = None) -> bool:
    """Install the shipped teacher of ``cfg`` (when there is one) into its cache ``folder``, unless
    that folder holds a finished teacher or an interrupted training (its checkpoint resumes).
    Written into a temporary sibling renamed into place: a failure leaves the cache as it was.
    Returns whether it installed one."""
    folder = Path(folder)
    if (folder / RESULT).exists() or (folder / CHECKPOINT).exists():
        return False
    source = find_shipped(cfg.digest(), root)
    if source is None:
        return False
    manifest = check_artifact(source, cfg)
    with staged_folder(folder) as staging:  # replaces an unstarted run's folder (no checkpoint, no result)
        for name in FILES:
            shutil.copyfile(source / name, staging / name)
        _write_installed(staging, folder, cfg, manifest, source)
    result = manifest["result"]
    print(f"teacher: installed the shipped teacher {source.name} (val mIoU {result.get('miou', float('nan')):.2f}, "
          f"trained at commit {str(manifest.get('commit'))[:10]}) into {folder}", flush=True)
    return True


def _write_installed(staging: Path, folder: Path, cfg: RunConfig, manifest: dict[str, Any], source: Path) -> None:
    atomic_write_text(staging / CONFIG, json.dumps(cfg.to_dict(), indent=2, default=str))
    package = Path(__file__).resolve().parent
    artifact = f"idd_lib/teachers/{source.name}" if source.resolve().parent == package else str(source)
    shipped = {"artifact": artifact, "manifest_sha256": file_sha256(source / MANIFEST), "installed": now()}
    # the manifest's machine facts where the training's own provenance predates them
    provenance = {"machine": manifest.get("machine"), **manifest["provenance"], "source": shipped}
    atomic_write_text(staging / PROVENANCE, json.dumps(provenance, indent=2))
    # the result as the training wrote it; its location is the cache folder's, not the staging one's
    atomic_write_text(staging / RESULT, json.dumps({**manifest["result"], "run_dir": relative_location(folder)},
                                                   indent=2))


def is_installed_copy(folder: Path) -> bool:
    """Whether a cache folder's teacher was installed from a shipped artifact (not trained here)."""
    return "source" in read_provenance(folder)


def ship(cfg: RunConfig, trained: Path, name: str, root: Path | None = None,
         options: dict[str, str] | None = None, base: tuple[str, float | None] | None = None) -> Path:
    """Write the teacher trained in cache folder ``trained`` (config ``cfg``: profile ``name`` with
    ``options``; ``base``: the registered profile and sweep prior it resolves from, when ``name`` is
    not one) as the shipped teacher ``<root>/<name>/`` with its manifest; returns that folder.
    Refused for a folder that is itself an installed copy, or whose files do not match ``cfg``."""
    trained = Path(trained)
    if not (trained / RESULT).exists():
        raise ShippedTeacherError(f"{trained}: no finished teacher here; expected a trained one "
                                  f"(make teacher PROFILE={name})")
    if is_installed_copy(trained):
        raise ShippedTeacherError(f"{trained}: installed from a shipped teacher, not trained here; "
                                  f"retrain it first (make teacher PROFILE={name})")
    result, config = read_result(trained), read_json(trained / CONFIG, "retrain the teacher (make teacher)")
    digest = cfg.digest()
    if result.get("config_digest") != digest or fields_digest(config) != digest:
        raise ShippedTeacherError(f"{trained}: holds config {result.get('config_digest')}; expected {digest}")
    target = (root or teachers_root()) / name
    with staged_folder(target) as staging:
        for file in FILES:
            shutil.copyfile(trained / file, staging / file)
        manifest = _manifest(name, options or {}, digest, config, result, read_provenance(trained),
                             {file: file_sha256(staging / file) for file in FILES})
        if base and base[1] is not None:
            manifest = {"base_profile": base[0], "prior": base[1], **manifest}
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return target


def _manifest(name: str, options: dict[str, str], digest: str, config: dict[str, Any], result: dict[str, Any],
              prov: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    """The manifest: first what a reader looks for (commit, machine, metrics, wall time), then the
    run's result and provenance as written by the training, which an install restores."""
    git = prov.get("git", {"commit": "unknown", "dirty": False})
    machine = prov.get("machine") or {**machine_facts(), "recorded": "when shipped (the training did not record it)"}
    names = result.get("class_names") or [str(k) for k in range(len(result.get("per_class_iou", [])))]
    return {
        "format": FORMAT, "profile": name, "options": options, "config_digest": digest,
        "commit": git.get("commit"), "dirty": git.get("dirty"), "machine": machine,
        "metrics": {"miou": result.get("miou"), "per_class_iou": dict(zip(names, result.get("per_class_iou", [])))},
        "wall_time_s": result.get("wall_time_s"), "steps": result.get("steps"),
        "shipped": {"at": now(), "commit": git_state()["commit"]},
        "files": files, "config": config,
        "result": {k: v for k, v in result.items() if k != "run_dir"},
        "provenance": {k: v for k, v in prov.items() if k != "host"},  # the training machine's name stays private
    }
