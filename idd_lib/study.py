"""Run the study headless: the notebooks in order through papermill, for one profile.

``python -m idd_lib.study --profile default`` writes ``results/<profile>/`` (executed notebooks,
runs, figures, tables, REPORT.md). A notebook whose executed copy is complete for the same
parameters is skipped; a failed one is kept as ``<name>.failed.ipynb`` and the error names the
notebook and cell.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import Profile, parse_assignments, parse_weights
from .notebook import KERNEL_NAME, ensure_kernel
from .paths import profile_dir, project_root
from .presets import study_profile
from .rundir import atomic_write_text
from .runs import join_options, override_tag, run_dir, student_config
from .teachers import file_sha256

# 07_position runs before 06_report: the report collects what every analysis notebook wrote.
STUDY_NOTEBOOKS = ("00_synthetic_data", "01_teacher", "03_ablation", "04_interclass_distance", "05_tsne",
                   "07_position", "06_report")


# The notebook that composes the report: cheap, and it reads every other notebook's outputs and the
# tuning, so the study always runs it again.
REPORT_NOTEBOOK = "06_report"
# Where a study notebook writes what the report shows (recorded per executed notebook, see execute).
OUTPUT_FOLDERS = ("tables", "figures")
# Parameters that say where and how a notebook runs, not what it shows.
RUN_PARAMETERS = ("profile", "options", "progress", "nproc", "executor", "workers", "threads", "slurm")


class StudyError(RuntimeError):
    pass


def notebook_dir() -> Path:
    """The notebooks the study executes: those of the checkout idd_lib is imported from (its
    editable install), whatever the working directory (a kernel started beside a copied notebook);
    else the project root's."""
    checkout = Path(__file__).resolve().parents[1] / "notebooks"
    return checkout if checkout.is_dir() else project_root() / "notebooks"


def notebook_source(name: str) -> Path:
    """The study's notebook ``name``; a one-line error naming the folder when it is not there."""
    source = notebook_dir() / f"{name}.ipynb"
    if not source.is_file():
        available = sorted(p.stem for p in notebook_dir().glob("*.ipynb"))
        raise StudyError(f"notebook {name}: {source} does not exist; expected one of {available}")
    return source


def manifest_path(output: Path) -> Path:
    """Beside an executed notebook: the files it wrote and their SHA-256."""
    return output.with_name(output.stem + ".outputs.json")


def write_manifest(output: Path, folder: Path | None, started: float) -> None:
    """Record the files under ``folder``'s tables/ and figures/ written since ``started`` (paths
    relative to the manifest, so a moved results folder keeps it valid)."""
    written = sorted(p for sub in OUTPUT_FOLDERS for p in (folder / sub).glob("*")
                     if p.is_file() and p.stat().st_mtime >= started - 1) if folder else []
    files = {os.path.relpath(p, output.parent): file_sha256(p) for p in written}
    atomic_write_text(manifest_path(output), json.dumps(files, indent=1) + "\n")


def outputs_intact(output: Path) -> bool:
    """Every file the executed notebook recorded is on disk as it wrote it."""
    try:
        files = json.loads(manifest_path(output).read_text())
        return all(file_sha256(output.parent / name) == digest for name, digest in files.items())
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def is_complete(output: Path, parameters: dict[str, Any]) -> bool:
    """An executed notebook that ran every cell without an exception for these parameters, whose
    recorded outputs are on disk unchanged (an overwritten figure or table makes it run again)."""
    if not output.is_file():
        return False
    try:
        meta = json.loads(output.read_text()).get("metadata", {}).get("papermill", {})
    except (OSError, json.JSONDecodeError):
        return False
    finished = meta.get("parameters") == parameters and not meta.get("exception") and meta.get("end_time") is not None
    return finished and outputs_intact(output)


def execute(name: str, output: Path, parameters: dict[str, Any], force: bool = False,
            outputs: Path | None = None) -> bool:
    """Execute ``notebooks/<name>.ipynb`` into ``output``; returns False when skipped as complete.
    ``outputs``: the folder whose tables/ and figures/ the notebook writes (recorded beside ``output``)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    if not force and is_complete(output, parameters):
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    running = output.with_name(output.stem + ".running.ipynb")
    source = notebook_source(name)
    ensure_kernel()
    started = time.time()
    # CurveZMQ keys for the kernel (its kernelspec supports them): no plain-TCP warning from every run
    encrypted = Config({"KernelManager": {"transport_encryption": "auto"}})
    try:
        papermill.execute_notebook(str(source), str(running), parameters=parameters, kernel_name=KERNEL_NAME,
                                   cwd=str(project_root()), progress_bar=False, config=encrypted)
    except PapermillExecutionError as err:
        failed = output.with_name(output.stem + ".failed.ipynb")
        os.replace(running, failed)
        raise StudyError(f"notebook {name} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                         f"(executed copy: {failed})") from None
    except (RuntimeError, TimeoutError) as err:  # nbclient's DeadKernelError / CellTimeoutError
        raise StudyError(f"notebook {name}: the kernel died or timed out ({type(err).__name__}: {err}); "
                         f"partial copy: {running}") from None
    write_manifest(output, outputs, started)
    os.replace(running, output)
    output.with_name(output.stem + ".failed.ipynb").unlink(missing_ok=True)  # a stale copy from an earlier failure
    return True


def ablation_grid(profile: Profile, methods: str = "", seeds: str = "", variants: str = "") -> list[dict[str, Any]]:
    """The runs of 03_ablation: methods x seeds, plus variants ``"method|weights|options"`` joined by ';'."""
    method_list = [m.strip() for m in methods.split(",") if m.strip()] or list(profile.methods)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()] or list(profile.seeds)
    except ValueError:
        raise ValueError(f"seeds: expected comma-separated integers, got {seeds!r}") from None
    grid = [{"method": m, "seed": s, "weights": "", "options": "", "tag": ""} for m in method_list for s in seed_list]
    for variant in filter(None, (v.strip() for v in variants.split(";"))):
        parts = [p.strip() for p in variant.split("|")]
        if len(parts) != 3:
            raise ValueError(f"variants: expected 'method|weights|options', got {variant!r}")
        method, weights, options = parts
        tag = override_tag(parse_weights(weights), parse_assignments(options, "options"))
        grid += [{"method": method, "seed": s, "weights": weights, "options": options, "tag": tag} for s in seed_list]
    for run in grid:  # validate every run before the first one trains
        student_config(profile, run["method"], run["seed"], parse_weights(run["weights"]),
                       parse_assignments(run["options"], "options"))
    return grid


def run_distill_notebook(profile: Profile, run: dict[str, Any], progress: bool = False) -> Path:
    """Execute 02_distill for one grid entry into its run folder; returns the executed notebook."""
    cfg = student_config(profile, run["method"], run["seed"], parse_weights(run["weights"]),
                         parse_assignments(run["options"], "options"))
    output = run_dir(profile, cfg, run["tag"]) / "02_distill.ipynb"
    profile_options = {"profile_options": join_options(dict(profile.options))} if profile.options else {}
    execute("02_distill", output, {"profile": profile.name, **profile_options, **run, "progress": progress})
    return output


# The notebooks that train grids of runs, and so take the sweep's settings (idd_lib.sweep).
SWEEP_NOTEBOOKS = ("03_ablation", "07_position")


def notebook_parameters(profile: Profile, name: str, options: str,
                        sweep: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What the study passes to notebook ``name``; None: the notebook does not apply to the profile's
    data (the synthetic benchmark's samples and position-prior sweep need the synthetic dataset).
    ``sweep``: executor, workers, threads for the notebooks that train grids (only those set, so a
    notebook complete without them stays complete)."""
    synthetic = profile.data.dataset == "synthetic"
    if name == "00_synthetic_data" and not synthetic:
        return None
    parameters: dict[str, Any] = {"profile": profile.name, **({"options": options} if options else {})}
    if name in SWEEP_NOTEBOOKS:
        parameters.update({key: value for key, value in (sweep or {}).items() if value})
    return {**parameters, "sweep": False} if name == "07_position" and not synthetic else parameters


def notebook_defaults(name: str) -> dict[str, Any]:
    """The values of notebook ``name``'s parameters cell."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook_source(name)))
    return {key: ast.literal_eval(spec["default"]) for key, spec in declared.items()}


def output_dir(profile: Profile, name: str, parameters: Mapping[str, Any]) -> Path:
    """Where notebook ``name`` writes its figures and tables: the profile's folder, which the report
    reads, when every parameter that chooses what it shows is the study's; else its own folder
    ``explore/<name>-<digest of those parameters>/`` there, so exploring never replaces the study's."""
    study = {**notebook_defaults(name), **(notebook_parameters(profile, name, "") or {})}
    chosen = {k: v for k, v in parameters.items() if k not in RUN_PARAMETERS and v != study.get(k)}
    folder = profile_dir(profile.name)
    if not chosen:
        return folder
    digest = hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:8]
    explore = folder / "explore" / f"{name}-{digest}"
    print(f"exploring ({', '.join(f'{k}={v!r}' for k, v in chosen.items())}): figures and tables go to {explore}, "
          "not to the study's")
    return explore


def run_study(profile_name: str, force: bool = False, only: tuple[str, ...] = (), options: str = "",
              sweep: dict[str, Any] | None = None) -> Path:
    """The study's notebooks for one profile; ``sweep``: how 03_ablation and 07_position train their
    grids (``{"executor": "local", "workers": 2, "threads": 1}``; empty: inline)."""
    profile = study_profile(profile_name, options)
    out = profile_dir(profile.name)
    started = time.time()
    for name in only or STUDY_NOTEBOOKS:
        t0 = time.time()
        parameters = notebook_parameters(profile, name, options, sweep)
        if parameters is None:
            print(f"[study] {name}: skipped ({profile.data.dataset} data, not the synthetic benchmark)", flush=True)
            continue
        ran = execute(name, out / "notebooks" / f"{name}.ipynb", parameters, force or name == REPORT_NOTEBOOK, out)
        print(f"[study] {name}: {'done' if ran else 'complete, skipped'} in {time.time() - t0:.0f} s", flush=True)
    print(f"[study] profile {profile.name}: {time.time() - started:.0f} s; report: {out / 'REPORT.md'}", flush=True)
    return out / "REPORT.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m idd_lib.study", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", help="profile to run (see idd_lib.presets.PROFILES)")
    parser.add_argument("--force", action="store_true", help="re-execute notebooks even if complete")
    parser.add_argument("--only", nargs="*", default=(), help="run only these notebooks")
    parser.add_argument("--options", default="", help='options of every run, e.g. "data.root=/data/cityscapes"')
    parser.add_argument("--executor", default="", help="how grids train: inline, local or slurm (idd_lib.sweep)")
    parser.add_argument("--workers", type=int, default=0, help="local worker processes (0: the notebooks' default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: the executor's default)")
    args = parser.parse_args(argv)
    sweep = {"executor": args.executor, "workers": args.workers, "threads": args.threads}
    try:
        run_study(args.profile, args.force, tuple(args.only), args.options, sweep)
    except (StudyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
