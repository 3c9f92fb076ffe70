"""Sweeps: the runs of a grid (:func:`idd_lib.study.ablation_grid`) in this process, in local worker
processes, or as Slurm jobs (submitit), with one progress bar and a table at the end.

``python -m idd_lib.sweep --profile default --methods baseline,idd --seeds 0,1,2 --executor local
--workers 2 --threads 1`` trains what is missing and prints, per run, its state (done, resumed,
skipped as done, failed), wall time, log file and first error line. The run folder (named by the
config digest) is the unit of work: a finished run is skipped, an interrupted one resumes from its
``checkpoint.pt``, and a claim file in the folder lets exactly one process train it at a time (a
claim of a dead process or of a Slurm job that no longer runs is taken over). The teachers of the
grid are trained before any student is dispatched. A run's numbers do not depend on the executor:
every executor trains it with :func:`idd_lib.runs.run_student` at the same thread count.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import runs, study
from .config import SWEEP_NAME, Profile, apply_overrides, parse_assignments, parse_weights, teacher_of
from .notebook import headless_stream
from .paths import profile_dir
from .presets import PROFILES, study_profile
from .rundir import (CHECKPOINT, CLAIM, RESULT, SLURM_LOGS, SWEEP_LOG, TAKEOVER, atomic_write_text, make_folder, now,
                     read_claim, release_claim, try_claim)

GRID_KEYS = ("method", "seed", "weights", "options", "tag")  # an entry of study.ablation_grid
STATES = ("done", "resumed", "skipped", "failed")  # skipped: finished before (or by another sweep)
COLUMNS = ["run", "method", "seed", "tag", "state", "wall_s", "log", "error"]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CLAIM_POLL_S = 2.0   # how often a run claimed by a live process is checked again
SLURM_POLL_S = 5.0   # how often squeue is asked which jobs still run

Outcome = dict[str, Any]   # state, wall_s, error (and log, added by the executor)


class SweepError(RuntimeError):
    """A sweep that cannot start (its executor is unusable); the message says what to check."""


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """What each Slurm job of a sweep asks for (``sbatch`` options)."""
    partition: str = ""          # empty: the cluster's default partition
    time_min: int = 60           # time limit per job in minutes; a timed-out job is requeued and resumes
    cpus_per_task: int = 0       # 0: the sweep's threads (times nproc)
    gpus: int = 0                # GPUs per job; nproc > 1 asks for at least nproc
    mem_gb: float = 0.0          # memory per job in GB; 0: the cluster's default
    sbatch: str = ""             # extra sbatch flags, e.g. "--qos=high --account=lab"
    array_parallelism: int = 0   # > 0: the runs as one job array, at most this many at once
    max_requeues: int = 3        # requeues after a timeout or preemption (submitit's max_num_timeout)
    signal_delay_s: int = 90     # Slurm warns a job (USR2) this long before its time limit: checkpoint, requeue

    def __post_init__(self):
        if self.time_min < 1:
            raise ValueError(f"slurm.time_min: expected at least 1 minute, got {self.time_min}")
        if not 0 < self.signal_delay_s < self.time_min * 60:
            raise ValueError(f"slurm.signal_delay_s: expected 1 to {self.time_min * 60 - 1} s (below time_min "
                             f"{self.time_min} min), got {self.signal_delay_s}")


def slurm_options(text: str) -> SlurmOptions:
    """``"partition=gpu,time_min=120,sbatch=--qos=high"`` (the notebooks' ``slurm`` parameter) as options."""
    fields = {f.name: f for f in dataclasses.fields(SlurmOptions)}
    values: dict[str, Any] = {}
    for key, value in parse_assignments(text, "slurm").items():
        if key not in fields:
            raise ValueError(f"slurm: unknown option {key!r}; expected one of {', '.join(fields)}")
        kind = type(fields[key].default)
        try:
            values[key] = kind(value)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise ValueError(f"slurm: {key} expects {noun}, got {value!r}") from None
    return SlurmOptions(**values)


# ---------------------------------------------------------------- one run, where it is trained

def run_config(profile: Profile, run: dict[str, Any]):
    return runs.student_config(profile, run["method"], run["seed"], parse_weights(run["weights"]),
                               parse_assignments(run["options"], "options"), check=False)


def run_folder(profile: Profile, run: dict[str, Any]) -> Path:
    return runs.run_dir(profile, run_config(profile, run), run["tag"])


def set_threads(threads: int | None) -> None:
    """Intra-op threads of this process (and of the processes it starts: OpenMP/MKL variables)."""
    if threads:
        torch.set_num_threads(threads)
        os.environ.update({name: str(threads) for name in THREAD_VARIABLES})


def first_error_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else '(no message)'}"


def execute_run(profile: Profile, run: dict[str, Any], threads: int | None = None, nproc: int = 1,
                notebook: bool = False) -> Outcome:
    """Train one grid entry in this process (a worker, a Slurm job, or the inline sweep) under the
    run folder's claim; a failure is returned as an outcome, not raised, so the sweep goes on."""
    set_threads(threads)
    started, run = time.time(), {key: run[key] for key in GRID_KEYS}
    folder = make_folder(run_folder(profile, run))
    if (folder / RESULT).exists():
        return {"state": "skipped", "wall_s": 0.0, "error": ""}
    holder = claim_run(folder)
    try:
        if (folder / RESULT).exists():  # trained meanwhile by the holder of an earlier claim
            return {"state": "skipped", "wall_s": round(time.time() - started, 1), "error": ""}
        state = "resumed" if (folder / CHECKPOINT).exists() else "done"
        try:
            if notebook:
                study.run_distill_notebook(profile, run)
            else:
                runs.run_student(profile, run["method"], run["seed"], parse_weights(run["weights"]),
                                 parse_assignments(run["options"], "options"), run["tag"], progress=False,
                                 nproc=nproc)
        except Exception as err:  # noqa: BLE001  (the sweep names it and finishes the rest)
            return {"state": "failed", "wall_s": round(time.time() - started, 1), "error": first_error_line(err)}
        return {"state": state, "wall_s": round(time.time() - started, 1), "error": ""}
    finally:
        release_claim(folder, holder)


# ---------------------------------------------------------------- claims

def current_slurm_job() -> str:
    """This process's Slurm job as squeue names it (``123``, or ``120_3`` for a task of an array)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def claim_holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": now(), "slurm_job": current_slurm_job(),
            "thread": threading.get_ident()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def slurm_jobs_alive(job_ids: list[str]) -> set[str]:
    """The ones of ``job_ids`` Slurm still lists (pending, running, requeued, completing)."""
    if not job_ids:
        return set()
    listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(job_ids)],
                            capture_output=True, text=True, timeout=60)
    if listed.returncode and "Invalid job id" not in listed.stderr:
        raise SweepError(f"squeue failed: {listed.stderr.strip() or listed.returncode}; check `scontrol ping`")
    return set(listed.stdout.split()) & set(job_ids)


def claim_alive(claim: dict[str, Any]) -> bool:
    """Whether the process of a claim may still be training: a Slurm job still listed by squeue
    (the current job, requeued, is not: it is taking its own run back), else a live process on
    this host; a claim of another host without a Slurm job cannot be checked and counts as live."""
    job = claim.get("slurm_job", "")
    if job and shutil.which("squeue"):
        return job != current_slurm_job() and job in slurm_jobs_alive([job])
    if claim.get("host") == socket.gethostname():
        return isinstance(claim.get("pid"), int) and pid_alive(claim["pid"])
    return bool(claim.get("host"))  # a torn claim (no holder written) is stale


def take_over(folder: Path, stale: dict[str, Any], holder: dict[str, Any]) -> bool:
    """Replace the stale claim ``stale`` by ``holder``; one process at a time (a takeover file), and
    only if the claim is still the stale one (not the fresh claim of a faster taker)."""
    if not try_claim(folder, holder, TAKEOVER):
        return False
    try:
        if read_claim(folder) == stale:
            (folder / CLAIM).unlink(missing_ok=True)
        return try_claim(folder, holder)
    finally:
        (folder / TAKEOVER).unlink(missing_ok=True)


def claim_run(folder: Path) -> dict[str, Any]:
    """Claim ``folder`` for this process: wait while a live process holds it, take over a stale claim."""
    holder = claim_holder()
    while not try_claim(folder, holder):
        current = read_claim(folder)
        if current is not None and not claim_alive(current) and take_over(folder, current, holder):
            break
        time.sleep(CLAIM_POLL_S)
    return holder


# ---------------------------------------------------------------- executors

Report = Callable[[dict[str, Any], Outcome], None]   # called once per dispatched run, as it ends


class InlineExecutor:
    """Today's behaviour: one run after another in this process, each as an executed ``02_distill``
    notebook in its run folder (a profile no notebook can name, e.g. a sweep copy, trains in-process)."""

    def __init__(self, workers: int, threads: int | None, slurm: SlurmOptions, nproc: int):
        if workers != 1:
            raise ValueError(f"workers: the inline executor runs one run at a time; use executor 'local' "
                             f"for {workers} workers")
        self.threads, self.nproc = threads, nproc

    def check(self) -> None:
        """Nothing to check: this process trains."""

    def dispatch(self, profile: Profile, pending: list[dict[str, Any]], report: Report) -> None:
        notebook = self.nproc == 1 and notebook_can_name(profile)
        saved = torch.get_num_threads(), {name: os.environ.get(name) for name in THREAD_VARIABLES}
        try:
            for run in pending:
                outcome = execute_run(profile, run, self.threads, self.nproc, notebook)
                folder = run_folder(profile, run)
                log = folder / ("02_distill.failed.ipynb" if outcome["state"] == "failed" else "02_distill.ipynb")
                report(run, {**outcome, "log": str(log) if notebook else ""})
        finally:  # this process's threads as they were (the sweep's threads were for its runs)
            torch.set_num_threads(saved[0])
            for name, value in saved[1].items():
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def notebook_can_name(profile: Profile) -> bool:
    """Whether 02_distill's parameters (a registered profile and its options) give this profile."""
    registered = PROFILES.get(profile.name)
    return registered is not None and registered.configure(dict(profile.options)) == profile


class LocalExecutor:
    """``workers`` processes on this machine, one fresh ``python -m idd_lib.sweep --worker`` per run
    with ``threads`` torch threads; its output goes to the run folder's ``sweep.log``."""

    def __init__(self, workers: int, threads: int | None, slurm: SlurmOptions, nproc: int):
        self.workers, self.nproc = workers, nproc
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.processes: set[subprocess.Popen] = set()
        self.stopping = False

    def check(self) -> None:
        """Nothing to check: workers are processes of this machine's Python."""

    def dispatch(self, profile: Profile, pending: list[dict[str, Any]], report: Report) -> None:
        named = profile_spec(profile)  # before any worker starts: a profile workers cannot rebuild stops here
        with tempfile.TemporaryDirectory(prefix="idd-sweep-") as scratch:
            pool = ThreadPoolExecutor(self.workers)
            futures = {pool.submit(self.spawn, profile, named, run, Path(scratch) / str(i)): run
                       for i, run in enumerate(pending)}
            try:
                for future in as_completed(futures):
                    report(futures[future], future.result())
            except BaseException:  # Ctrl-C: no new worker, the running ones interrupted (they release their claims)
                self.stopping = True
                for process in list(self.processes):
                    process.send_signal(signal.SIGINT)
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def spawn(self, profile: Profile, named: dict[str, Any], run: dict[str, Any], scratch: Path) -> Outcome:
        if self.stopping:
            return {"state": "failed", "wall_s": 0.0, "error": "not started: the sweep was interrupted", "log": ""}
        started, folder = time.time(), make_folder(run_folder(profile, run))
        spec, outcome = scratch.with_suffix(".spec.json"), scratch.with_suffix(".json")
        spec.write_text(json.dumps({"profile": named, "run": run, "threads": self.threads, "nproc": self.nproc}))
        log = folder / SWEEP_LOG
        env = {**os.environ, **{name: str(self.threads) for name in THREAD_VARIABLES}}
        with log.open("a") as handle:
            handle.write(f"--- {now()} sweep worker on {socket.gethostname()}\n")
            handle.flush()
            process = subprocess.Popen(worker_command(spec, outcome), stdout=handle, stderr=subprocess.STDOUT, env=env)
            self.processes.add(process)
            try:
                code = process.wait()
            finally:
                self.processes.discard(process)
        if outcome.exists():
            return {**json.loads(outcome.read_text()), "log": str(log)}
        return {"state": "failed", "wall_s": round(time.time() - started, 1), "log": str(log),
                "error": f"worker exited with code {code}: {last_line(log)}"}


def worker_command(spec: Path, outcome: Path) -> list[str]:
    return [sys.executable, "-m", "idd_lib.sweep", "--worker", str(spec), "--outcome", str(outcome)]


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def _checkpointable():
    try:
        from submitit.helpers import Checkpointable
    except ImportError:
        raise SweepError("executor slurm: submitit is not installed; pip install 'idd-study[cluster]'") from None
    return Checkpointable


def sweep_job(profile: Profile, run: dict[str, Any], threads: int, nproc: int):
    """The callable a Slurm job runs: :func:`execute_run`. Checkpointable: on a timeout or a
    preemption submitit requeues the same call, which resumes the run from its ``checkpoint.pt``."""

    class SweepJob(_checkpointable()):
        def __call__(self, profile: Profile, run: dict[str, Any], threads: int, nproc: int) -> Outcome:
            return execute_run(profile, run, threads, nproc)

    return SweepJob(), (profile, run, threads, nproc)


def slurm_parameters(options: SlurmOptions, threads: int, nproc: int, name: str) -> dict[str, Any]:
    """submitit's ``update_parameters`` for one job of a run with ``nproc`` processes (torchrun on
    ``nproc`` GPUs inside the job when > 1)."""
    parameters: dict[str, Any] = {"job_name": name, "time": options.time_min, "signal_delay_s": options.signal_delay_s,
                                  "nodes": 1, "ntasks_per_node": 1,
                                  "cpus_per_task": options.cpus_per_task or threads * nproc}
    gpus = max(options.gpus, nproc if nproc > 1 else 0)
    parameters.update({"partition": options.partition} if options.partition else {})
    parameters.update({"gpus_per_node": gpus} if gpus else {})
    parameters.update({"mem": f"{round(options.mem_gb * 1024)}M"} if options.mem_gb else {})  # sbatch: MB
    parameters.update({"array_parallelism": options.array_parallelism} if options.array_parallelism else {})
    extra = sbatch_flags(options.sbatch)
    return {**parameters, "additional_parameters": extra} if extra else parameters


def sbatch_flags(text: str) -> dict[str, Any]:
    """``"--qos=high --exclusive"`` as submitit's additional parameters ({"qos": "high", "exclusive": True})."""
    flags: dict[str, Any] = {}
    for word in shlex.split(text):
        if not word.startswith("--"):
            raise ValueError(f"slurm.sbatch: expected long sbatch flags like --qos=high, got {word!r}")
        key, _, value = word[2:].partition("=")
        flags[key.replace("-", "_")] = value or True
    return flags


def check_slurm(options: SlurmOptions) -> None:
    """Before any job: sbatch on PATH, the controller answering, the partition known."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise SweepError("executor slurm: sbatch/sinfo are not on PATH; run the sweep where Slurm's client "
                         "commands are installed (a login node; check `which sbatch`) or use executor 'local'")
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        probe = subprocess.CompletedProcess([], 1, "", "no answer within 60 s")
    if probe.returncode:
        reason = next(iter(probe.stderr.strip().splitlines()), f"exit {probe.returncode}")
        raise SweepError(f"executor slurm: the Slurm controller does not answer (sinfo: {reason}); check "
                         f"`scontrol ping` and `sinfo`, and that slurmctld runs")
    partitions = sorted(set(probe.stdout.split()))
    if options.partition and options.partition not in partitions:
        raise SweepError(f"slurm.partition: unknown partition {options.partition!r}; this cluster has {partitions}")


class SlurmExecutor:
    """One Slurm job per run through submitit (or one job array with ``array_parallelism``); job
    files and stdout/stderr under the run folder's ``slurm/`` (the array's under ``<profile>/slurm/``)."""

    def __init__(self, workers: int, threads: int | None, slurm: SlurmOptions, nproc: int):
        if workers != 1:
            raise ValueError("workers: Slurm runs every job the cluster admits; limit them with "
                             "slurm array_parallelism, not workers")
        self.options, self.nproc = slurm, nproc
        self.threads = threads or slurm.cpus_per_task or 1
        sbatch_flags(slurm.sbatch)

    def check(self) -> None:
        check_slurm(self.options)
        _checkpointable()

    def executor(self, folder: Path, name: str):
        import submitit
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.options.max_requeues)
        executor.update_parameters(**slurm_parameters(self.options, self.threads, self.nproc, name))
        return executor

    def submit(self, profile: Profile, pending: list[dict[str, Any]]) -> list[tuple[Any, dict[str, Any]]]:
        calls = [sweep_job(profile, run, self.threads, self.nproc) for run in pending]
        if self.options.array_parallelism:
            executor = self.executor(profile_dir(profile.name) / SLURM_LOGS, f"sweep-{profile.name}")
            with executor.batch():
                jobs = [executor.submit(job, *arguments) for job, arguments in calls]
            return list(zip(jobs, pending))
        submitted = []
        for (job, arguments), run in zip(calls, pending):
            folder = run_folder(profile, run)
            submitted.append((self.executor(folder / SLURM_LOGS, folder.name).submit(job, *arguments), run))
        return submitted

    def dispatch(self, profile: Profile, pending: list[dict[str, Any]], report: Report) -> None:
        submitted = self.submit(profile, pending)
        waiting = {job.job_id: (job, run) for job, run in submitted}
        try:
            while waiting:
                time.sleep(SLURM_POLL_S)
                for job_id in set(waiting) - slurm_jobs_alive(list(waiting)):
                    job, run = waiting.pop(job_id)
                    report(run, job_outcome(job))
        except BaseException:  # Ctrl-C: the sweep's jobs are cancelled (a rerun resumes them)
            subprocess.run(["scancel", *waiting], capture_output=True)
            raise


def job_outcome(job) -> Outcome:
    """What a finished Slurm job returned, or why it returned nothing (cancelled, killed, node failure)."""
    from submitit.core.utils import pickle_load
    log = str(job.paths.stdout)
    result = job.paths.result_pickle
    if result.exists():
        status, value = pickle_load(result)
        if status == "success":
            return {**value, "log": log}
        return {"state": "failed", "wall_s": 0.0, "log": str(job.paths.stderr),
                "error": last_line_of_text(str(value))}
    stderr = job.paths.stderr
    reason = last_line(stderr) if stderr.exists() else "no output"
    return {"state": "failed", "wall_s": 0.0, "log": str(stderr),
            "error": f"Slurm job {job.job_id} ended without a result (cancelled or killed?): {reason}"}


def last_line_of_text(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no message)"


EXECUTORS: dict[str, type] = {"inline": InlineExecutor, "local": LocalExecutor, "slurm": SlurmExecutor}


def make_executor(executor: str, workers: int = 1, threads: int | None = None, slurm: SlurmOptions | None = None,
                  nproc: int = 1):
    """The executor named ``executor``, its settings checked (one-line errors naming the option)."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor: unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    for option, value in (("workers", workers), ("nproc", nproc)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{option}: expected an integer >= 1, got {value!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: expected an integer >= 1 torch threads per run, got {threads!r}")
    return EXECUTORS[executor](workers, threads, slurm or SlurmOptions(), nproc)


# ---------------------------------------------------------------- the sweep

def teacher_option_sets(grid: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The distinct teacher options (``data.*``, ``teacher.*``, ``teacher_train.*``) of the grid's runs."""
    sets = []
    for run in grid:
        options = {k: v for k, v in parse_assignments(run["options"], "options").items()
                   if k.startswith(runs.TEACHER_OPTIONS)}
        if options not in sets:
            sets.append(options)
    return sets


def prepare_teacher(profile: Profile, options: dict[str, str], progress: bool, nproc: int) -> None:
    """Train the teacher of ``options`` unless cached, under its folder's claim (a concurrent sweep
    of the same profile waits for it instead of training it too)."""
    folder = runs.teacher_dir(teacher_of(apply_overrides(profile.run_config(), options)))
    if (folder / RESULT).exists():
        return
    holder = claim_run(make_folder(folder))
    try:
        runs.ensure_teacher(profile, progress=progress, nproc=nproc, options=options)
    finally:
        release_claim(folder, holder)


def run_sweep(profile: Profile | str, grid: list[dict[str, Any]], executor: str = "inline", workers: int = 1,
              threads: int | None = None, slurm: SlurmOptions | None = None, progress: bool = True,
              nproc: int = 1) -> pd.DataFrame:
    """Train the runs of ``grid`` (:func:`idd_lib.study.ablation_grid`) that are not finished, with
    ``executor`` (``inline``, ``local`` with ``workers`` processes, ``slurm``), ``threads`` torch
    threads per run and ``nproc`` processes per run (torchrun). Returns one row per run: state
    (done, resumed, skipped, failed), wall time, log, first error line; a failed run does not stop
    the others and is named in a warning."""
    chosen = make_executor(executor, workers, threads, slurm, nproc)
    profile = study_profile(profile) if isinstance(profile, str) else profile
    rows: dict[int, dict[str, Any]] = {}
    pending = []
    for index, run in enumerate(grid):
        if (run_folder(profile, run) / RESULT).exists():
            rows[index] = table_row(profile, run, {"state": "skipped", "wall_s": 0.0, "log": "", "error": ""})
        else:
            pending.append({**run, "index": index})
    if pending:
        chosen.check()
    for options in teacher_option_sets(pending):  # here, once: no two workers race on a teacher's cache
        prepare_teacher(profile, options, progress, nproc)
    bar = tqdm(total=len(grid), initial=len(rows), desc=f"sweep ({executor})", unit="run", disable=not progress,
               dynamic_ncols=True)
    lines = ProgressLines(len(grid), len(rows), headless_stream() if progress else None)

    def report(run: dict[str, Any], outcome: Outcome) -> None:
        rows[run["index"]] = table_row(profile, run, outcome)
        failed = sum(row["state"] == "failed" for row in rows.values())
        bar.update()
        bar.set_postfix(failed=failed, refresh=False)
        lines.finished(rows[run["index"]], failed)

    try:
        if pending:
            chosen.dispatch(profile, pending, report)
    finally:
        bar.close()
    table = pd.DataFrame([rows[i] for i in sorted(rows)], columns=COLUMNS)
    for row in table[table["state"] == "failed"].itertuples():
        warnings.warn(f"run {row.run} failed: {row.error} (log: {row.log or 'above'})", stacklevel=2)
    return table


class ProgressLines:
    """One line per finished run for a headless log (``stream``; None: silent): runs done / total,
    the run, its state and wall time, and the ETA at this sweep's pace so far."""

    def __init__(self, total: int, done: int, stream):
        self.total, self.done, self.stream = total, done, stream
        self.started, self.first_done = time.time(), done

    def finished(self, row: dict[str, Any], failed: int) -> None:
        self.done += 1
        if self.stream is None:
            return
        pace = (time.time() - self.started) / (self.done - self.first_done)
        eta = pace * (self.total - self.done)
        print(f"[sweep] {self.done}/{self.total} runs ({failed} failed): {row['run']} {row['state']} in "
              f"{float(row['wall_s'] or 0):.0f} s; ETA {eta / 60:.0f} min", file=self.stream, flush=True)


def table_row(profile: Profile, run: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    return {"run": run_folder(profile, run).name, "method": run["method"], "seed": run["seed"], "tag": run["tag"],
            **{key: outcome.get(key, "") for key in ("state", "wall_s", "log", "error")}}


# ---------------------------------------------------------------- command line

def profile_spec(profile: Profile) -> dict[str, Any]:
    """``profile`` as a worker's JSON spec names it: a registered profile, its options and, for a
    copy of the prior sweep, the prior (workers read JSON, never unpickle)."""
    base, _, prior = profile.name.partition(SWEEP_NAME)
    named = {"name": base, "options": dict(profile.options), "prior": float(prior) if prior else None}
    if base not in PROFILES or spec_profile(named) != profile:
        raise SweepError(f"executor local: profile {profile.name!r} is not a registered profile with options "
                         "(or a copy of its prior sweep), which workers rebuild by name; use executor inline")
    return named


def spec_profile(named: dict[str, Any]) -> Profile:
    profile = PROFILES[named["name"]].configure(named["options"])
    return profile if named["prior"] is None else profile.sweep_profile(named["prior"])


def interrupt_once(signum: int, frame: Any) -> None:
    """Ctrl-C reaches a worker twice (from the terminal's process group and from the sweep): the first
    interrupts the run, later ones are ignored so that they cannot cut short the release of its claim."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def worker_main(spec: Path, outcome: Path) -> int:
    """A local worker: one run from the JSON spec the sweep wrote."""
    signal.signal(signal.SIGINT, interrupt_once)
    job = json.loads(spec.read_text())
    result = execute_run(spec_profile(job["profile"]), job["run"], job["threads"], job["nproc"])
    atomic_write_text(outcome, json.dumps(result))
    if result["error"]:
        print(f"error: {result['error']}", file=sys.stderr)
    return 0


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m idd_lib.sweep", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--profile", default="default", help="profile (idd_lib.presets.PROFILES)")
    add("--options", default="", help="options of the whole profile, e.g. data.root=/data/cityscapes")
    add("--methods", default="", help="comma-separated methods (default: the profile's)")
    add("--seeds", default="", help="comma-separated seeds (default: the profile's)")
    add("--variants", default="", help="extra runs as method|weights|options, separated by ';'")
    add("--executor", default="inline", help=f"one of {', '.join(EXECUTORS)}")
    add("--workers", type=int, default=1, help="local worker processes")
    add("--threads", type=int, default=None, help="torch threads per run (default: cores / workers)")
    add("--nproc", type=int, default=1, help="processes (GPUs) per run, torchrun inside the run's job")
    add("--partition", default="", help="Slurm partition")
    add("--time", type=int, default=60, help="Slurm time limit per job, minutes")
    add("--cpus-per-task", type=int, default=0, help="Slurm CPUs per job (default: threads x nproc)")
    add("--gpus", type=int, default=0, help="Slurm GPUs per job")
    add("--mem", type=float, default=0, help="Slurm memory per job, GB")
    add("--sbatch", default="", help='extra sbatch flags, e.g. "--qos=high --account=lab"')
    add("--array-parallelism", type=int, default=0, help="submit one job array, at most this many at once")
    add("--no-progress", action="store_true", help="no progress bar")
    add("--worker", type=Path, help=argparse.SUPPRESS)
    add("--outcome", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.worker:
        return worker_main(args.worker, args.outcome)
    try:
        slurm = SlurmOptions(partition=args.partition, time_min=args.time, cpus_per_task=args.cpus_per_task,
                             gpus=args.gpus, mem_gb=args.mem, sbatch=args.sbatch,
                             array_parallelism=args.array_parallelism)
        profile = study_profile(args.profile, args.options)
        grid = study.ablation_grid(profile, args.methods, args.seeds, args.variants)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the table names the failures
            table = run_sweep(profile, grid, args.executor, args.workers, args.threads, slurm,
                              not args.no_progress, args.nproc)
    except (SweepError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; the same command continues the rest", file=sys.stderr)
        return 130
    print(table.to_string(index=False))
    failed = table[table["state"] == "failed"]
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
