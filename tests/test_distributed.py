"""Data-parallel training: rank sharding of batches and validation, and a real 2-process gloo run
through torchrun (launched by the 02_distill notebook's ``nproc``) against the single-process run
and against two torchrun agents joined by the c10d rendezvous (the multi-node launch)."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
import torch

from idd_lib import rundir, runs
from idd_lib.data.datasets import EpochBatchSampler, eval_loader
from idd_lib.losses import METHODS

ROOT = Path(__file__).resolve().parents[1]


def test_ranks_split_each_global_batch_exactly():
    single = list(EpochBatchSampler(20, 8, total_steps=7, seed=3))
    ranks = [list(EpochBatchSampler(20, 8, total_steps=7, seed=3, rank=r, world=2)) for r in range(2)]
    for step, batch in enumerate(single):
        shards = [ranks[r][step] for r in range(2)]
        assert all(len(s) == 4 for s in shards)
        assert sorted(shards[0] + shards[1]) == sorted(batch)
    resumed = list(EpochBatchSampler(20, 8, total_steps=7, seed=3, start_step=4, rank=1, world=2))
    assert resumed == ranks[1][4:]


def test_global_batch_must_divide_over_the_processes():
    with pytest.raises(ValueError, match="data.batch_size: the global batch 6 does not divide over 4 processes"):
        EpochBatchSampler(20, 6, total_steps=2, seed=0, rank=0, world=4)


def test_validation_shards_cover_every_image_once(tiny_profile):
    from idd_lib.data.datasets import build_dataset
    val = build_dataset(tiny_profile.data, "val", train=False)
    seen = [list(eval_loader(val, rank=r, world=3).sampler) for r in range(3)]
    assert sorted(i for shard in seen for i in shard) == list(range(len(val)))


def test_data_parallel_runs_need_a_registered_profile(tiny_profile):
    with pytest.raises(ValueError, match="nproc: data-parallel runs start from a registered profile"):
        runs.run_student(tiny_profile, "idd", nproc=2)


def test_nproc_below_one_is_an_error():
    with pytest.raises(ValueError, match="nproc: expected a number of processes >= 1, got 0"):
        runs.run_student("quick", "idd", nproc=0)


def test_launcher_reports_bad_input_in_one_line():
    done = subprocess.run([sys.executable, "-m", "idd_lib.launch", "--profile", "quick", "--method", "nope"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: method: unknown method 'nope'; expected one of "
                                                f"{sorted(METHODS)}"]


def _train_rows(run_dir: Path) -> tuple[list[dict], list[dict]]:
    rows = runs.read_metrics(run_dir)
    return [r for r in rows if "split" not in r], [r for r in rows if r.get("split") == "val"]


@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_the_single_process_run(quick_study, tmp_path, monkeypatch, one_thread):
    """Same global batch (8 = 2 x 4), same initialisation and data: the step-0 validation (sharded
    over ranks, reduced by torchmetrics) equals the single-process one exactly, both replicas end
    with the same weights, and training tracks the single-process run. (Not bit-exact: without
    CUDA there is no SyncBatchNorm, so each process normalises with its own 4 images.)"""
    options = "model.dropout=0"  # dropout masks are drawn per process: leave them out of the comparison
    results = {}
    for name, nproc in (("single", 1), ("ddp", 2)):
        root = tmp_path / name
        shutil.copytree(quick_study.parent / "cache", root / "cache")  # the cached teacher and data
        monkeypatch.setenv("IDD_RESULTS", str(root))
        papermill.execute_notebook(str(ROOT / "notebooks" / "02_distill.ipynb"), str(tmp_path / f"{name}.ipynb"),
                                   parameters={"profile": "quick", "method": "idd", "options": options,
                                               "progress": False, "nproc": nproc}, cwd=str(ROOT))
        results[name] = rundir.read_result(next((root / "quick" / "runs").glob("*/result.json")).parent)
    single, ddp = results["single"], results["ddp"]
    assert ddp["processes"] == 2 and ddp["replicas_in_sync"] is True and "processes" not in single
    prov = json.loads((Path(ddp["run_dir"]) / "provenance.json").read_text())
    assert prov["processes"] == 2 and "finished" in prov

    (single_train, single_val), (ddp_train, ddp_val) = _train_rows(single["run_dir"]), _train_rows(ddp["run_dir"])
    # rank 0 alone wrote the log: one row per logged step, as in the single run
    assert [r["step"] for r in ddp_train] == [r["step"] for r in single_train]
    assert [r["step"] for r in ddp_val] == [r["step"] for r in single_val] == [0, 10, 20, 30]
    assert ddp_val[0]["miou"] == pytest.approx(single_val[0]["miou"], abs=1e-9)
    assert ddp_val[0]["per_class_iou"] == pytest.approx(single_val[0]["per_class_iou"], abs=1e-9)
    for a, b in zip(single_train, ddp_train):
        assert b["loss/total"] == pytest.approx(a["loss/total"], rel=0.25), a["step"]
    assert abs(ddp["miou"] - single["miou"]) < 6.0
    # DDP really trained: far from the untrained start
    assert ddp["miou"] > ddp_val[0]["miou"] + 10
    assert not any(p.name.startswith(".") for p in Path(ddp["run_dir"]).iterdir())
    # several nodes: two torchrun agents of one process each, joined by the c10d rendezvous on this
    # machine, make the same 2-rank run, so they end with exactly the 2-process run's weights
    nodes = _run_on_two_nodes(quick_study.parent / "cache", tmp_path / "nodes", ["--method", "idd", "--options", options])
    assert nodes["processes"] == 2 and nodes["replicas_in_sync"] is True
    weights, node_weights = (torch.load(Path(r["run_dir"]) / "model.pt", weights_only=True) for r in (ddp, nodes))
    assert weights.keys() == node_weights.keys() and all(torch.equal(weights[k], node_weights[k]) for k in weights)
    assert nodes["miou"] == ddp["miou"]
    # a failing rank stops the launch with the launcher's one-line reason
    with pytest.raises(RuntimeError, match=r"torchrun with 2 processes failed \(exit \d+\): error: data.batch_size: "
                                           r"the global batch 7 does not divide over 2 processes"):
        runs.run_student("quick", "idd", options={"data.batch_size": "7"}, progress=False, nproc=2)


def _run_on_two_nodes(cache: Path, root: Path, arguments: list[str]) -> dict:
    """``torchrun --nnodes 2 --rdzv_backend c10d`` twice on this machine, as on two nodes sharing
    ``$IDD_RESULTS``; returns the run's result."""
    shutil.copytree(cache, root / "cache")
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv_backend", "c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id", "two-nodes",
               "--rdzv_conf", "join_timeout=120", "-m", "idd_lib.launch", "--profile", "quick", "--no-progress",
               *arguments]
    env = {**os.environ, "IDD_RESULTS": str(root), "OMP_NUM_THREADS": "1"}
    agents = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    try:
        outputs = [agent.communicate(timeout=300) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert [agent.returncode for agent in agents] == [0, 0], [err[-2000:] for _, err in outputs]
    return rundir.read_result(next((root / "quick" / "runs").glob("*/result.json")).parent)
