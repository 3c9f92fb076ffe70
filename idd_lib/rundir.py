"""The files of a run folder: their names, atomic writes, and readers that name a damaged file.

A run folder holds ``config.json``, ``provenance.json``, ``metrics.jsonl``, ``checkpoint.pt``,
``model.pt`` and ``result.json``; a sweep adds ``claim.json`` while a process trains it, the
worker's ``sweep.log`` and the Slurm job logs under ``slurm/``. Writes go to a temporary sibling renamed into place, so a killed
process or a full disk never leaves a torn file and never touches the earlier one. Paths inside
result files are relative to the results root, so a moved or copied results folder reads the same.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .paths import results_root

CONFIG = "config.json"
PROVENANCE = "provenance.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
RESULT = "result.json"
CLAIM = "claim.json"        # who trains the run now (idd_lib.sweep); created exclusively, removed when done
TAKEOVER = "claim.takeover"  # held (exclusively) by the one process replacing a stale claim
SWEEP_LOG = "sweep.log"     # stdout and stderr of a local sweep worker
SLURM_LOGS = "slurm"        # submitit's job files and per-job stdout/stderr

_WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied"}


class RunFileError(ValueError):
    """A run file that cannot be written or read back; the message names it and what to do."""


def _write_error(path: Path, err: OSError) -> RunFileError:
    reason = _WRITE_ERRORS.get(err.errno, err.strerror or type(err).__name__)
    return RunFileError(f"{path}: cannot write ({reason}); earlier files are intact: free space or make "
                        f"the folder writable, or set IDD_RESULTS to another folder, then run again")


@contextlib.contextmanager
def _atomic(path: Path):
    """Yield a temporary sibling of ``path``, renamed onto it at the end; removed on any failure."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary sibling: a killed process never leaves a torn file."""
    with _atomic(Path(path)) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with _atomic(Path(path)) as tmp:
        tmp.write_text(text)


def make_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(folder, err) from None
    return folder


@contextlib.contextmanager
def staged_folder(target: Path):
    """Yield an empty temporary sibling of folder ``target`` to fill; when the block ends it replaces
    ``target`` (an earlier one is removed), and on any failure it is removed: ``target`` is never
    left half-written."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.staging{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    make_folder(staging)
    try:
        yield staging
        try:
            if target.exists():
                old = target.with_name(f".{target.name}.old{os.getpid()}")
                os.replace(target, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging, target)
        except OSError as err:
            raise _write_error(target, err) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_state(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load`` restricted to tensors and plain containers (never arbitrary pickles)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def load_run_state(path: Path, remedy: str, map_location: str | torch.device = "cpu") -> dict:
    """:func:`load_state` of a run's checkpoint or model; a damaged file is a one-line error saying
    ``remedy``. A missing one raises ``FileNotFoundError``."""
    try:
        return load_state(path, map_location)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        reason = next(iter(str(err).splitlines()), "") or "empty or truncated file"
        raise RunFileError(f"{path}: unreadable ({type(err).__name__}: {reason}); {remedy}") from None


def read_json(path: Path, remedy: str) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFileError(f"{path}: damaged JSON ({err}); {remedy}") from None
    if not isinstance(value, dict):
        raise RunFileError(f"{path}: expected a JSON object, got {type(value).__name__}; {remedy}")
    return value


def relative_location(folder: Path) -> str:
    """``folder`` relative to the results root (its name when it lies elsewhere): what result files store."""
    folder = Path(folder).resolve()
    try:
        return folder.relative_to(results_root()).as_posix()
    except ValueError:
        return folder.name


def write_result(folder: Path, result: dict[str, Any]) -> None:
    atomic_write_text(folder / RESULT, json.dumps({**result, "run_dir": relative_location(folder)}, indent=2))


def read_result(folder: Path) -> dict[str, Any]:
    """A finished run's ``result.json``, with ``run_dir`` set to where the folder is now."""
    folder = Path(folder)
    result = read_json(folder / RESULT, "delete it to recompute it from the run's final checkpoint")
    return {**result, "run_dir": str(folder)}


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    """The JSON lines a run logged (training rows and validation rows); a damaged line is skipped
    with a warning naming the file and line (a run killed while writing leaves one)."""
    path = Path(folder) / METRICS
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            row = None
            warnings.warn(f"{path}: line {number} is damaged and skipped", stacklevel=2)
        if isinstance(row, dict):
            rows.append(row)
    return rows


def drop_rows_after(path: Path, step: int, final: bool = False) -> None:
    """Keep the log rows up to the checkpoint's step: a resumed run logs the later ones again (and,
    from the ``final`` checkpoint, the last validation and tune evaluation)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if row.get("step", 0) < step or row.get("step", 0) == step and not (final and row.get("split") in ("val", "tune")):
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def read_provenance(folder: Path) -> dict[str, Any]:
    """A run's ``provenance.json``; empty (with a warning naming it) when missing or damaged."""
    path = Path(folder) / PROVENANCE
    if not path.exists():
        return {}
    try:
        return read_json(path, "its run still counts; the provenance shows as unknown")
    except RunFileError as err:
        warnings.warn(str(err), stacklevel=2)
        return {}


def update_provenance(folder: Path, resumed_at: int | None = None, **fields: Any) -> None:
    prov = read_provenance(folder)
    if resumed_at is not None:
        prov["resumed"] = [*prov.get("resumed", []), {"step": resumed_at, "at": now()}]
    atomic_write_text(folder / PROVENANCE, json.dumps({**prov, **fields}, indent=2))


def rng_state() -> dict[str, Any]:
    # numpy's state as plain values: weights_only loading refuses numpy arrays
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [keys.tolist(), pos, has_gauss, gauss], "python": random.getstate()}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class MetricsLog:
    """The run's ``metrics.jsonl``, appended row by row (only rank 0 writes: ``enabled``)."""

    def __init__(self, folder: Path, enabled: bool = True):
        self.path = Path(folder) / METRICS
        self.handle = self.path.open("a") if enabled else None

    def write(self, row: dict[str, Any]) -> None:
        if self.handle is None:
            return
        try:
            self.handle.write(json.dumps(row) + "\n")
            self.handle.flush()
        except OSError as err:
            raise _write_error(self.path, err) from None

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def try_claim(folder: Path, holder: dict[str, Any], name: str = CLAIM) -> bool:
    """Create ``claim.json`` (or ``name``) holding ``holder`` only if it does not exist (``O_CREAT |
    O_EXCL``: of two processes racing, exactly one wins, also on NFS v3+); False when it exists."""
    path = Path(folder) / name
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as err:
        raise _write_error(path, err) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(holder))
    return True


def read_claim(folder: Path) -> dict[str, Any] | None:
    """The current claim of a run folder; None when there is none. A claim torn by a kill between
    create and write reads as an empty holder (no live process can be proven: stale)."""
    try:
        text = (Path(folder) / CLAIM).read_text()
    except FileNotFoundError:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def release_claim(folder: Path, holder: dict[str, Any]) -> None:
    """Remove ``claim.json`` if it is still ``holder``'s (never another process's claim)."""
    if read_claim(folder) == holder:
        (Path(folder) / CLAIM).unlink(missing_ok=True)
