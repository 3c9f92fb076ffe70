"""Sweeps (idd_lib.sweep): bad settings as one-line errors, the run-folder claim, the Slurm job a
run asks for, and (slow) real sweeps: local workers equal inline runs, a killed worker's run resumes
to the uninterrupted numbers, two concurrent sweeps train every run once, a failing run is named.
The tests marked ``slurm`` submit to a real Slurm cluster (.ci/slurm-local start; CI starts one)."""
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from idd_lib import presets, runs, study, sweep
from idd_lib.rundir import CHECKPOINT, CLAIM, RESULT, read_claim, read_metrics, read_provenance, try_claim

# The quick profile with short schedules: seconds per run, a teacher included.
SHORT = "train.iterations=4,teacher_train.iterations=4"
# training the time-limit test's run takes on this machine: more than its first 2-min job lets it train
TIME_LIMIT_TRAINING_S = 130


def short_profile(extra: str = ""):
    return presets.study_profile("quick", ",".join(filter(None, (SHORT, extra))))


def numbers(folder: Path) -> dict:
    """What must not depend on the executor: the result's metrics and every logged row but its clock."""
    result = json.loads((Path(folder) / RESULT).read_text())
    rows = [{k: v for k, v in row.items() if k != "time"} for row in read_metrics(folder)]
    return {"miou": result["miou"], "per_class_iou": result["per_class_iou"],
            "agreement": result.get("agreement/pearson"), "rows": rows}


def sweep_numbers(profile, grid, results: Path, monkeypatch, **settings) -> tuple[dict, object]:
    monkeypatch.setenv("IDD_RESULTS", str(results))
    table = sweep.run_sweep(profile, grid, progress=False, **settings)
    return {row.run: numbers(results / "quick" / "runs" / row.run) for row in table.itertuples()}, table


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- fast: bad input

@pytest.mark.parametrize("settings, message", [
    ({"executor": "dask"}, r"executor: unknown executor 'dask'; expected one of inline, local, slurm"),
    ({"executor": "local", "workers": 0}, r"workers: expected an integer >= 1, got 0"),
    ({"executor": "local", "threads": 0}, r"threads: expected an integer >= 1 torch threads per run, got 0"),
    ({"executor": "inline", "workers": 2}, r"workers: the inline executor runs one run at a time"),
    ({"executor": "slurm", "slurm": sweep.SlurmOptions(sbatch="qos=high")},
     r"slurm.sbatch: expected long sbatch flags"),
])
def test_bad_settings_are_one_line_errors_before_any_work(settings, message, tiny_profile, tmp_path):
    with pytest.raises(ValueError, match=message) as err:
        sweep.run_sweep(tiny_profile, [{"method": "baseline", "seed": 0, "weights": "", "options": "", "tag": ""}],
                        progress=False, **settings)
    one_line(err)
    assert not (tmp_path / "cache").exists() and not list(Path(os.environ["IDD_RESULTS"]).iterdir())


@pytest.mark.parametrize("text, message", [
    ("time_min=0", r"slurm.time_min: expected at least 1 minute, got 0"),
    ("time_min=1,signal_delay_s=60", r"slurm.signal_delay_s: expected 1 to 59 s \(below time_min 1 min\), got 60"),
    ("signal_delay_s=0", r"slurm.signal_delay_s: expected 1 to 3599 s"),
])
def test_a_time_limit_the_warning_signal_cannot_precede_is_refused(text, message):
    with pytest.raises(ValueError, match=message) as err:
        sweep.slurm_options(text)
    one_line(err)


def test_slurm_without_sbatch_says_what_to_check(tiny_profile, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm client on PATH
    grid = [{"method": "baseline", "seed": 0, "weights": "", "options": "", "tag": ""}]
    with pytest.raises(sweep.SweepError, match=r"sbatch/sinfo are not on PATH; .*check `which sbatch`") as err:
        sweep.run_sweep(tiny_profile, grid, executor="slurm", progress=False)
    one_line(err)
    assert not list(Path(os.environ["IDD_RESULTS"]).iterdir())  # no teacher trained, nothing written


def test_command_line_errors_are_one_line(capsys):
    assert sweep.main(["--profile", "quick", "--executor", "mpi"]) == 1
    assert capsys.readouterr().err == "error: executor: unknown executor 'mpi'; expected one of inline, local, slurm\n"
    assert sweep.main(["--profile", "quick", "--methods", "nope"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert sweep.main(["--profile", "quick", "--executor", "slurm", "--time", "0"]) == 1
    assert capsys.readouterr().err == "error: slurm.time_min: expected at least 1 minute, got 0\n"


# ---------------------------------------------------------------- fast: claims

def test_a_claim_is_exclusive_and_only_its_holder_releases_it(tmp_path):
    first, second = sweep.claim_holder(), {**sweep.claim_holder(), "pid": 1}
    assert try_claim(tmp_path, first) and not try_claim(tmp_path, second)
    sweep.release_claim(tmp_path, second)  # not the holder: the claim stays
    assert read_claim(tmp_path) == first
    sweep.release_claim(tmp_path, first)
    assert read_claim(tmp_path) is None


def test_a_second_ctrl_c_cannot_cut_short_a_workers_cleanup(tmp_path):
    """Ctrl-C reaches a local worker twice (the terminal's group, then the sweep); the second one,
    arriving while the worker releases its claim, must not interrupt the release."""
    released = tmp_path / "released"
    script = f"""
import os, signal
from idd_lib import sweep
signal.signal(signal.SIGINT, sweep.interrupt_once)
try:
    os.kill(os.getpid(), signal.SIGINT)
finally:
    os.kill(os.getpid(), signal.SIGINT)
    open({str(released)!r}, "w").close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "KeyboardInterrupt" in done.stderr and released.exists(), done.stderr


def test_a_claim_of_a_dead_process_is_taken_over_a_live_one_is_not(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = {**sweep.claim_holder(), "pid": sleeper.pid, "thread": 0}
    assert try_claim(tmp_path, live)
    assert sweep.claim_alive(live)
    mine = sweep.claim_holder()
    assert not sweep.claim_alive({}) and not try_claim(tmp_path, mine)  # a torn claim is stale
    sleeper.kill()
    sleeper.wait()
    assert not sweep.claim_alive(live)
    assert sweep.claim_run(tmp_path) != live and read_claim(tmp_path)["pid"] == os.getpid()
    assert not (tmp_path / "claim.takeover").exists()


def test_a_claim_of_a_slurm_job_is_live_while_squeue_lists_it(tmp_path, monkeypatch):
    if shutil.which("squeue") is None:
        pytest.skip("squeue is not installed")
    monkeypatch.setattr(sweep, "slurm_jobs_alive", lambda ids: {"77"})
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert sweep.claim_alive({"host": "elsewhere", "pid": 1, "slurm_job": "77"})
    assert not sweep.claim_alive({"host": "elsewhere", "pid": 1, "slurm_job": "78"})
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job, requeued: its own claim
    assert not sweep.claim_alive({"host": "elsewhere", "pid": 1, "slurm_job": "77"})
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")  # a task of an array goes by squeue's name for it
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert sweep.claim_holder()["slurm_job"] == "70_7"


# ---------------------------------------------------------------- fast: what a Slurm job asks for

def test_a_gpu_run_is_one_job_with_its_gpus_and_torchrun_inside(tmp_path, monkeypatch):
    options = sweep.SlurmOptions(partition="gpu", time_min=240, mem_gb=64, sbatch="--qos=high --exclusive")
    parameters = sweep.slurm_parameters(options, threads=4, nproc=8, name="idd-s0")
    assert parameters == {"job_name": "idd-s0", "time": 240, "signal_delay_s": 90, "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 32,
                          "partition": "gpu", "gpus_per_node": 8, "mem": "65536M",
                          "additional_parameters": {"qos": "high", "exclusive": True}}
    assert "gpus_per_node" not in sweep.slurm_parameters(sweep.SlurmOptions(), 2, 1, "cpu")
    submitit = pytest.importorskip("submitit")
    # the executor refuses to exist without srun; its job script needs no cluster (the fast tier has none)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    executor = submitit.SlurmExecutor(folder=tmp_path)
    executor.update_parameters(**parameters)
    script = executor._make_submission_file_text("python -m x", "0")
    for flag in ("--gpus-per-node=8", "--cpus-per-task=32", "--partition=gpu", "--time=240", "--qos=high",
                 "--exclusive", "--mem=65536M"):
        assert f"#SBATCH {flag}\n" in script
    command = runs.torchrun_command(presets.study_profile("quick", "train.iterations=9"), 8, ["--method", "idd"])
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8"]
    assert command[5:] == ["-m", "idd_lib.launch", "--profile", "quick", "--no-progress", "--profile-options",
                           "train.iterations=9", "--method", "idd"]


# ---------------------------------------------------------------- slow: real sweeps

@pytest.mark.slow
def test_local_workers_give_the_inline_numbers_and_a_rerun_skips(tmp_path, monkeypatch):
    profile = short_profile()
    grid = study.ablation_grid(profile, "baseline,kd", "0")
    inline, table = sweep_numbers(profile, grid, tmp_path / "inline", monkeypatch, executor="inline", threads=1)
    assert list(table["state"]) == ["done", "done"]
    assert all(Path(log).name == "02_distill.ipynb" and Path(log).is_file() for log in table["log"])
    local, table = sweep_numbers(profile, grid, tmp_path / "local", monkeypatch, executor="local", workers=2,
                                 threads=1)
    assert list(table["state"]) == ["done", "done"] and local == inline
    assert all(Path(log).name == "sweep.log" for log in table["log"])
    again = sweep.run_sweep(profile, grid, executor="local", workers=2, threads=1, progress=False)
    assert list(again["state"]) == ["skipped", "skipped"]


@pytest.mark.slow
def test_a_failing_run_is_named_and_the_others_finish(tmp_path, monkeypatch, capsys):
    profile = short_profile()
    grid = study.ablation_grid(profile, "baseline", "0", "baseline||train.lr=1e12")
    with pytest.warns(UserWarning, match=r"run baseline-train.lr=1e12-s0-\w+ failed: FloatingPointError: "):
        table = sweep.run_sweep(profile, grid, executor="local", threads=1, progress=False)
    assert list(table["state"]) == ["done", "failed"]
    failed = table.iloc[1]
    assert failed["error"].startswith("FloatingPointError: ")
    assert "FloatingPointError" in Path(failed["log"]).read_text()
    # the command line: the same table, exit 1, and the rerun retries only the failed run
    assert sweep.main(["--profile", "quick", "--options", SHORT, "--methods", "baseline", "--seeds", "0",
                       "--variants", "baseline||train.lr=1e12", "--executor", "local", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "skipped" in out and "failed" in out and "FloatingPointError" in out


def _sweep_in_thread(profile, grid, tables: list, **settings) -> threading.Thread:
    thread = threading.Thread(target=lambda: tables.append(sweep.run_sweep(profile, grid, progress=False, **settings)))
    thread.start()
    return thread


def wait_for_checkpoint(folder: Path, seconds: float = 600) -> None:
    """Until the run in ``folder`` has written its first checkpoint: it is mid-run, its claim held."""
    deadline = time.time() + seconds
    while not (folder / CHECKPOINT).exists() and time.time() < deadline:
        time.sleep(0.2)


@pytest.mark.slow
def test_a_killed_worker_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
    profile = short_profile("train.iterations=60,train.checkpoint_every=4")
    grid = study.ablation_grid(profile, "kd", "0")
    reference, _ = sweep_numbers(profile, grid, tmp_path / "reference", monkeypatch, executor="local", threads=1)
    monkeypatch.setenv("IDD_RESULTS", str(tmp_path / "killed"))
    folder = sweep.run_folder(profile, grid[0])
    tables: list = []
    thread = _sweep_in_thread(profile, grid, tables, executor="local", threads=1)
    wait_for_checkpoint(folder)
    os.kill(read_claim(folder)["pid"], signal.SIGKILL)  # the worker, mid-run
    thread.join()
    assert list(tables[0]["state"]) == ["failed"] and "worker exited with code -9" in tables[0]["error"][0]
    assert not (folder / RESULT).exists() and (folder / CLAIM).exists()  # a dead worker's claim stays
    resumed, table = sweep_numbers(profile, grid, tmp_path / "killed", monkeypatch, executor="local", threads=1)
    assert list(table["state"]) == ["resumed"]
    assert resumed == reference


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_cleanly_and_the_next_call_continues(tmp_path, monkeypatch):
    options = SHORT + ",train.iterations=60,train.checkpoint_every=4"
    command = [sys.executable, "-m", "idd_lib.sweep", "--profile", "quick", "--options", options, "--methods", "kd",
               "--seeds", "0", "--executor", "local", "--threads", "1", "--no-progress"]
    profile = presets.study_profile("quick", options)
    folder = sweep.run_folder(profile, study.ablation_grid(profile, "kd", "0")[0])
    # a terminal's foreground job: SIGINT at its default even where this test runs as a background job
    # (which a non-interactive shell starts with SIGINT ignored, and a child inherits that)
    sweeping = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_checkpoint(folder)
    worker = read_claim(folder)["pid"]
    os.killpg(sweeping.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
    _, err = sweeping.communicate(timeout=120)
    assert sweeping.returncode == 130 and "interrupted: finished runs are kept" in err
    assert not sweep.pid_alive(worker) and not (folder / CLAIM).exists() and not (folder / RESULT).exists()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and " resumed " in done.stdout, done.stdout + done.stderr[-2000:]


@pytest.mark.slow
def test_two_concurrent_sweeps_train_every_run_and_the_teacher_once(tmp_path, monkeypatch):
    profile = short_profile()
    grid = study.ablation_grid(profile, "baseline,kd", "0")
    tables: list = []
    threads = [_sweep_in_thread(profile, grid, tables, executor="local", threads=1) for _ in range(2)]
    for thread in threads:
        thread.join()
    for run in range(len(grid)):
        assert sorted(table["state"][run] for table in tables) == ["done", "skipped"]
    folders = [sweep.run_folder(profile, run) for run in grid] + [runs.teacher_dir(profile)]
    for folder in folders:  # a second training would have logged its steps again
        steps = [row["step"] for row in read_metrics(folder) if "split" not in row]
        assert steps and len(steps) == len(set(steps)), (folder, steps)
        assert (folder / RESULT).exists() and not (folder / CLAIM).exists()


# ---------------------------------------------------------------- Slurm (a real cluster)

@pytest.fixture
def slurm_cluster():
    """A Slurm cluster that answers; outside CI its absence skips, in CI it fails."""
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True) \
        if shutil.which("sinfo") else None
    if probe is None or probe.returncode or not probe.stdout.strip():
        reason = "no Slurm cluster answers (sinfo); start one with: eval \"$(.ci/slurm-local start)\""
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    pytest.importorskip("submitit")


@pytest.mark.slurm
def test_an_unknown_partition_names_the_partitions(slurm_cluster, tiny_profile):
    grid = [{"method": "baseline", "seed": 0, "weights": "", "options": "", "tag": ""}]
    message = r"slurm.partition: unknown partition 'nope'; this cluster has \["
    with pytest.raises(sweep.SweepError, match=message) as err:
        sweep.run_sweep(tiny_profile, grid, executor="slurm", slurm=sweep.SlurmOptions(partition="nope"),
                        progress=False)
    one_line(err)


@pytest.mark.slurm
def test_a_controller_that_does_not_answer_says_what_to_check(slurm_cluster, tiny_profile, tmp_path, monkeypatch):
    conf = Path(os.environ["SLURM_CONF"]).read_text()
    dead = "\n".join(line for line in conf.splitlines() if not line.startswith("SlurmctldPort="))
    (tmp_path / "slurm.conf").write_text(dead + "\nSlurmctldPort=9\nMessageTimeout=2\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    grid = [{"method": "baseline", "seed": 0, "weights": "", "options": "", "tag": ""}]
    message = r"the Slurm controller does not answer \(sinfo: .*check `scontrol ping`"
    with pytest.raises(sweep.SweepError, match=message):
        sweep.run_sweep(tiny_profile, grid, executor="slurm", progress=False)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_grid_through_slurm_gives_the_inline_numbers(slurm_cluster, tmp_path, monkeypatch):
    profile = short_profile()
    grid = study.ablation_grid(profile, "baseline,kd", "0,1")
    inline, _ = sweep_numbers(profile, grid, tmp_path / "inline", monkeypatch, executor="inline", threads=1)
    slurm, table = sweep_numbers(profile, grid, tmp_path / "slurm", monkeypatch, executor="slurm", threads=1)
    assert list(table["state"]) == ["done"] * 4 and slurm == inline
    for log in table["log"]:
        assert Path(log).parent.name == "slurm" and Path(log).parent.parent.name in set(table["run"])


@pytest.mark.slow
@pytest.mark.slurm
def test_a_cancelled_job_resumes_to_the_uninterrupted_numbers(slurm_cluster, tmp_path, monkeypatch):
    profile = short_profile("train.iterations=60,train.checkpoint_every=4")
    grid = study.ablation_grid(profile, "kd", "0")
    reference, _ = sweep_numbers(profile, grid, tmp_path / "reference", monkeypatch, executor="local", threads=1)
    monkeypatch.setenv("IDD_RESULTS", str(tmp_path / "cancelled"))
    folder = sweep.run_folder(profile, grid[0])
    tables: list = []
    thread = _sweep_in_thread(profile, grid, tables, executor="slurm", threads=1)
    wait_for_checkpoint(folder)
    subprocess.run(["scancel", read_claim(folder)["slurm_job"]], check=True)
    thread.join()
    assert list(tables[0]["state"]) == ["failed"] and "ended without a result" in tables[0]["error"][0]
    resumed, table = sweep_numbers(profile, grid, tmp_path / "cancelled", monkeypatch, executor="slurm", threads=1)
    assert list(table["state"]) == ["resumed"] and resumed == reference


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_at_its_time_limit_is_requeued_and_ends_with_the_uninterrupted_numbers(slurm_cluster, tmp_path,
                                                                                     monkeypatch):
    # jobs of 2 min: Slurm sends USR2 30 s before a job's limit, up to 30 s earlier still (its time-limit
    # check runs every 30 s), so 60 to 90 s into each job; the run, sized to outlast that on this machine,
    # checkpoints at that step, submitit requeues the job, the next one resumes and finishes
    iterations = iterations_lasting(TIME_LIMIT_TRAINING_S, tmp_path / "calibration", monkeypatch)
    profile = short_profile(f"train.iterations={iterations},train.checkpoint_every=100")
    grid = study.ablation_grid(profile, "kd", "0")
    reference, _ = sweep_numbers(profile, grid, tmp_path / "reference", monkeypatch, executor="local", threads=1)
    options = sweep.SlurmOptions(time_min=2, signal_delay_s=30, max_requeues=6)
    monkeypatch.setenv("IDD_RESULTS", str(tmp_path / "limited"))
    tables: list = []
    thread = _sweep_in_thread(profile, grid, tables, executor="slurm", threads=1, slurm=options)
    start_requeued_jobs_now(thread)
    table, folder = tables[0], sweep.run_folder(profile, grid[0])
    log = "".join(p.read_text() for p in (folder / "slurm").glob("*_log.err"))
    assert "this job is timed-out" in log and "stopped by SIGUSR2 after step" in log, (iterations, log[-3000:])
    assert list(table["state"]) == ["resumed"] and {table["run"][0]: numbers(folder)} == reference
    assert json.loads((folder / "provenance.json").read_text())["resumed"]


def iterations_lasting(seconds: float, results: Path, monkeypatch, probe: int = 100) -> int:
    """Training steps (a multiple of 100) of the time-limit test's kd run that last about ``seconds`` on
    this machine, timed on a ``probe``-step run: a fixed count outlasted one job on one day's machine and
    finished inside it on a faster one, so the signal never came."""
    profile = short_profile(f"train.iterations={probe}")
    grid = study.ablation_grid(profile, "kd", "0")
    sweep_numbers(profile, grid, results, monkeypatch, executor="local", threads=1)
    provenance = read_provenance(sweep.run_folder(profile, grid[0]))
    wall = datetime.fromisoformat(provenance["finished"]) - datetime.fromisoformat(provenance["started"])
    return 100 * max(5, math.ceil(seconds * probe / wall.total_seconds() / 100))


def start_requeued_jobs_now(sweep_thread: threading.Thread) -> int:
    """Until the sweep ends: a requeued job Slurm holds back for about 2 min (reason BeginTime) is
    let start at once, which only saves the test that wait; returns how many were."""
    started = set()
    while sweep_thread.is_alive():
        pending = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"], capture_output=True, text=True)
        for job, reason in (line.split(maxsplit=1) for line in pending.stdout.splitlines() if " " in line):
            if reason.strip() == "BeginTime" and job not in started:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
                started.add(job)
        sweep_thread.join(timeout=2)
    return len(started)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_array_runs_the_grid_and_a_rerun_skips_it(slurm_cluster, monkeypatch):
    profile = short_profile()
    grid = study.ablation_grid(profile, "baseline,kd", "0")
    options = sweep.SlurmOptions(array_parallelism=1)
    table = sweep.run_sweep(profile, grid, executor="slurm", threads=1, slurm=options, progress=False)
    assert list(table["state"]) == ["done", "done"]
    logs = [Path(log) for log in table["log"]]
    assert all(log.parent == Path(os.environ["IDD_RESULTS"]) / "quick" / "slurm" and log.is_file() for log in logs)
    assert len({log.name.split("_")[0] for log in logs}) == 1  # one array job, one task per run
    again = sweep.run_sweep(profile, grid, executor="slurm", threads=1, slurm=options, progress=False)
    assert list(again["state"]) == ["skipped", "skipped"]


def test_workers_rebuild_their_profile_from_a_json_spec():
    profile = presets.study_profile("quick", "train.iterations=3")
    for candidate in (profile, profile.sweep_profile(0.0)):
        named = sweep.profile_spec(candidate)
        assert sweep.spec_profile(json.loads(json.dumps(named))) == candidate
    unregistered = dataclasses.replace(profile, name="mine")
    with pytest.raises(sweep.SweepError, match="executor local: profile 'mine' is not a registered profile"):
        sweep.profile_spec(unregistered)


def test_a_headless_sweep_prints_a_line_per_finished_run_with_an_eta(monkeypatch):
    import io
    import types

    stream, clock = io.StringIO(), iter([100.0, 130.0, 160.0, 0.0])
    monkeypatch.setattr(sweep, "time", types.SimpleNamespace(time=lambda: next(clock)))
    lines = sweep.ProgressLines(total=5, done=1, stream=stream)          # one run finished before
    lines.finished({"run": "kd-s0-abc", "state": "done", "wall_s": 29.6}, failed=0)
    lines.finished({"run": "kd-s1-def", "state": "failed", "wall_s": 3.0}, failed=1)
    assert stream.getvalue().splitlines() == [
        "[sweep] 2/5 runs (0 failed): kd-s0-abc done in 30 s; ETA 2 min",     # 30 s a run, 3 to go
        "[sweep] 3/5 runs (1 failed): kd-s1-def failed in 3 s; ETA 1 min"]
    silent = sweep.ProgressLines(total=2, done=0, stream=None)
    silent.finished({"run": "x", "state": "done", "wall_s": 1.0}, failed=0)   # a terminal or Lab: the bar only
    assert silent.done == 1
