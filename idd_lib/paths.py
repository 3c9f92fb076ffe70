"""Where the study writes: ``$IDD_RESULTS`` or ``<project root>/results``."""
from __future__ import annotations

import os
from pathlib import Path


def project_root(start: Path | None = None) -> Path:
    """The nearest folder above ``start`` (default: cwd) holding pyproject.toml, else cwd."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "idd_lib").is_dir():
            return folder
    return here


def results_root() -> Path:
    env = os.environ.get("IDD_RESULTS")
    return Path(env).resolve() if env else project_root() / "results"


def cache_root() -> Path:
    """Shared between profiles: generated data and trained teachers."""
    return results_root() / "cache"


def profile_dir(profile: str) -> Path:
    """Everything one profile's study writes: runs/, figures/, tables/, notebooks/, REPORT.md."""
    return results_root() / profile


def reference_dir(profile: str, root: Path | None = None) -> Path:
    """The reference results the project carries for ``profile`` (``make verify``, committed tuning)."""
    return (root or project_root() / "reference") / profile
