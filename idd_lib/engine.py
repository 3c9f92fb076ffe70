"""One training loop for the teacher and every distillation method, and the evaluator.

``train`` is device-agnostic (CUDA when present, else CPU), uses bf16 autocast, channels_last and
optionally ``torch.compile`` on CUDA, SGD with the poly schedule, logs JSON lines, checkpoints
atomically and resumes from its last checkpoint. Under ``torchrun`` the same loop runs data-parallel
(:mod:`idd_lib.distributed`): DDP, rank-sharded batches, metrics reduced over ranks, rank 0 writes.
Which losses run is decided by the method registry (:mod:`idd_lib.losses`), never here.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pickle
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex
from tqdm.auto import tqdm  # a notebook bar in Jupyter, text on stderr elsewhere

from . import distributed
from .config import EvalConfig, RunConfig
from .data.datasets import IGNORE_INDEX, build_dataset, dataset_spec, eval_loader, train_loader
from .losses import DistillationCriterion
from .inference import check_eval_config, predict
from .models import Segmentor, build_segmentor
from .provenance import provenance

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
RESULT = "result.json"
METRICS = "metrics.jsonl"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device: {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary sibling and rename, so a killed process never leaves a torn file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_state(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load`` restricted to tensors and plain containers (never arbitrary pickles)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _load_checkpoint(path: Path) -> dict:
    try:
        return load_state(path)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        reason = next(iter(str(err).splitlines()), "") or "empty or truncated file"
        raise ValueError(f"{path}: unreadable checkpoint ({type(err).__name__}: {reason}); "
                         "delete it to restart this run from step 0") from None


def _drop_rows_after(path: Path, step: int, final: bool = False) -> None:
    """Keep the log rows up to the checkpoint's step: a resumed run logs the later ones again (and,
    from the ``final`` checkpoint, the last validation)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if row.get("step", 0) < step or row.get("step", 0) == step and not (final and row.get("split") == "val"):
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _update_provenance(run_dir: Path, resumed_at: int | None = None, **fields: Any) -> None:
    path = run_dir / "provenance.json"
    prov = json.loads(path.read_text()) if path.exists() else {}
    if resumed_at is not None:
        prov["resumed"] = [*prov.get("resumed", []), {"step": resumed_at, "at": _now()}]
    atomic_write_text(path, json.dumps({**prov, **fields}, indent=2))


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device, amp: bool = True,
             options: EvalConfig | None = None) -> dict[str, Any]:
    """mIoU (torchmetrics, ignore 255), single-scale whole-image by default; ``options`` selects
    sliding windows and multi-scale + flip (:mod:`idd_lib.inference`). Classes absent from both
    labels and predictions of the whole set are NaN and left out of the mean."""
    was_training = model.training
    model.eval()
    jaccard = MulticlassJaccardIndex(num_classes, average="none", ignore_index=IGNORE_INDEX,
                                     zero_division=float("nan")).to(device)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            scores = predict(model, images, labels.shape[-2:], options)
        jaccard.update(scores.argmax(1), labels)
    iou = jaccard.compute().cpu()
    model.train(was_training)
    return {"miou": float(torch.nanmean(iou)) * 100, "per_class_iou": [float(v) * 100 for v in iou]}


def _poly(total: int, power: float):
    return lambda step: (1 - step / total) ** power


def _rng_state() -> dict[str, Any]:
    # numpy's state as plain values: weights_only loading refuses numpy arrays
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [keys.tolist(), pos, has_gauss, gauss], "python": random.getstate()}


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def training_step(network: nn.Module, teacher: nn.Module | None, criterion: DistillationCriterion,
                  optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                  amp: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step of the student (then of the terms with their own optimiser, e.g. the discriminator,
    on the same outputs). Returns the total loss and the terms' values as tensors: nothing here
    reads a value back to the host."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        student_out = network(images)
        teacher_out = None
        if criterion.needs_teacher:
            # no_grad, not inference_mode: the losses save teacher tensors for the student's backward
            with torch.no_grad():
                teacher_out = teacher(images)
        loss, values = criterion(student_out, teacher_out, labels, images)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if distributed.active():  # DDP averages the network's gradients, this the terms' own parameters'
        distributed.average_gradients(criterion.student_parameters())
    optimizer.step()
    values.update(criterion.update(student_out, teacher_out, labels, images))
    return loss, values


def prefit_terms(criterion: DistillationCriterion, teacher: nn.Module, dataset, cfg: RunConfig,
                 device: torch.device, memory_format: torch.memory_format, amp: bool) -> None:
    """Fit the terms' modules that are fitted before training (PID's teacher read-out with
    ``pid.teacher_fit=prefit``) on the teacher's outputs for the first training batches.

    Every rank fits on the same (global) batches, so the modules agree without communication. The
    global RNG is left as it was: the training draws exactly what it draws without this phase.
    """
    for term in criterion.pending_prefits().values():
        with torch.random.fork_rng(devices=[]):
            loader = train_loader(dataset, cfg.data, term.prefit_steps, cfg.train.seed, pin_memory=device.type == "cuda")

            def teacher_outputs():
                for images, _ in loader:
                    images = images.to(device, non_blocking=True, memory_format=memory_format)
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        outputs = teacher(images)
                    yield outputs  # outside the no_grad block: a suspended generator keeps its grad mode

            term.prefit(teacher_outputs())


def load_model(run_dir: Path, cfg: RunConfig, device: torch.device | str = "cpu") -> Segmentor:
    """The final network of a finished run, checked against the config it should match."""
    num_classes = dataset_spec(cfg.data).num_classes
    model = build_segmentor(cfg.model, num_classes)
    path = Path(run_dir) / MODEL
    try:
        state = load_state(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no trained model here (run not finished?)") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise ValueError(f"{path}: checkpoint does not match the configured architecture with {num_classes} classes "
                         f"({first})") from None
    return model.to(device).eval()


def train(cfg: RunConfig, run_dir: Path, teacher: Segmentor | None = None, *, resume: bool = True,
          progress: bool = True, extra: dict[str, Any] | None = None,
          on_evaluate: Callable[[nn.Module], dict[str, float]] | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` (distilling from ``teacher`` when the method needs one) into ``run_dir``.

    Writes config.json, provenance.json, metrics.jsonl, checkpoint.pt, model.pt and result.json
    (rank 0 only under DDP; every rank returns the result). A finished run (result.json present) is
    returned as is; an interrupted one resumes.
    ``on_evaluate(model)`` runs at every validation (and at step 0 when ``eval_every`` is set);
    its numbers join that validation row and, at the end, the result - e.g. the agreement with
    the teacher's distance matrix (:class:`idd_lib.analysis.TeacherAgreement`).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / RESULT).exists() and resume:
        return json.loads((run_dir / RESULT).read_text())
    started = time.time()
    main, rank, world = distributed.is_main(), distributed.rank(), distributed.world_size()
    device = resolve_device(cfg.train.device)
    if world > 1 and device.type == "cuda":
        device = distributed.device()
    cuda = device.type == "cuda"
    amp = cfg.train.amp and cuda
    memory_format = torch.channels_last if cfg.train.channels_last and cuda else torch.contiguous_format
    torch.backends.cudnn.benchmark = cuda  # fixed training crops: the autotuned kernels are reused
    # every rank draws the same random numbers (dropout, CIRKD's queue keys), so replicated state stays equal
    seed_everything(cfg.train.seed)
    spec = dataset_spec(cfg.data)
    train_set = build_dataset(cfg.data, "train", train=True, seed=cfg.train.seed)
    val_set = build_dataset(cfg.data, "val", train=False)

    check_eval_config(cfg.train.eval)
    # ImageNet initialisation only for a fresh start: a resumed run loads its own weights
    fresh = not (resume and (run_dir / CHECKPOINT).exists())
    model = build_segmentor(cfg.model, spec.num_classes, pretrained=fresh).to(device, memory_format=memory_format)
    teacher_channels = teacher.feature_channels if teacher is not None else None
    criterion = DistillationCriterion(cfg.loss, spec.num_classes, model.feature_channels, teacher_channels).to(device)
    if criterion.needs_teacher:
        # eval mode: the teacher returns only what the losses read ("out", "feat"; no auxiliary head)
        teacher = teacher.to(device, memory_format=memory_format).eval().requires_grad_(False)
    if world > 1 and cfg.train.sync_bn and not cuda and main:
        warnings.warn("train.sync_bn: PyTorch's SyncBatchNorm needs CUDA; this CPU (gloo) run keeps "
                      "per-process BatchNorm statistics", stacklevel=2)
    network = distributed.wrap(model, cfg.train.sync_bn and cuda)
    teacher_net = teacher
    if cfg.train.compile:
        network = torch.compile(network)
        teacher_net = torch.compile(teacher) if criterion.needs_teacher else teacher
    # terms that train modules with their own optimiser (the adversarial discriminator) keep them out
    params = [p for p in (*model.parameters(), *criterion.student_parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    total = cfg.train.iterations
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _poly(total, cfg.train.poly_power))

    step = 0
    rng_state = None
    checkpoint = run_dir / CHECKPOINT
    if resume and checkpoint.exists():
        state = _load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng_state = state["rng"]
        step = state["step"]
        started -= state.get("elapsed", 0.0)
        if main:
            _drop_rows_after(run_dir / METRICS, step, final=step == total)
            _update_provenance(run_dir, resumed_at=step)
    elif main:
        (run_dir / METRICS).unlink(missing_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, default=str))
        atomic_write_text(run_dir / "provenance.json", json.dumps(
            {**provenance(device), "seed": cfg.train.seed, "processes": world}, indent=2))

    def save_checkpoint() -> None:
        if not main:
            return
        atomic_save({"model": model.state_dict(), "criterion": criterion.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": _rng_state(), "step": step, "elapsed": time.time() - started}, checkpoint)

    # after loading a checkpoint: a resumed run's modules are fitted already
    prefit_terms(criterion, teacher_net, train_set, cfg, device, memory_format, amp)
    loader = train_loader(train_set, cfg.data, total, cfg.train.seed, start_step=step, pin_memory=cuda,
                          rank=rank, world=world)
    val = eval_loader(val_set, cfg.data, pin_memory=cuda, rank=rank, world=world)
    model.train()
    criterion.train()
    # only rank 0 writes the log (the others write to the null device, one code path)
    log = (run_dir / METRICS).open("a") if main else open(os.devnull, "w")
    label = "teacher" if (extra or {}).get("role") == "teacher" else f"{cfg.loss.method} s{cfg.train.seed}"
    bar = tqdm(total=total, initial=step, disable=not (progress and main), desc=label, mininterval=2.0,
               dynamic_ncols=True)
    last_values: dict[str, float] = {}

    def validate() -> dict[str, Any]:
        metrics = evaluate(model, val, spec.num_classes, device, amp, cfg.train.eval)
        if on_evaluate is not None:
            with torch.random.fork_rng(devices=[]):  # an analysis hook must not change the training's dropout draws
                metrics.update(on_evaluate(model))
        return metrics

    if on_evaluate is not None and cfg.train.eval_every and step == 0:
        with torch.random.fork_rng(devices=[]):  # the curve's starting point, without changing the run
            log.write(json.dumps({"step": 0, "split": "val", **validate()}) + "\n")
    batches = iter(loader)
    if rng_state is not None:  # only now: creating the data iterator draws from the global RNG
        _restore_rng(rng_state)
    for images, labels in batches:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        loss, values = training_step(network, teacher_net, criterion, optimizer, images, labels, amp)
        scheduler.step()
        step += 1
        bar.update(1)
        # Reading a value forces a host sync: on CUDA only at log/checkpoint steps.
        must_log = step % cfg.train.log_every == 0 or step == total
        must_save = cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0
        if must_log or must_save or not cuda:
            # one all-reduce: every rank logs, and stops on, the same mean values
            names = [*values, "total"]
            means = distributed.average(torch.stack([v.detach().float() for v in (*values.values(), loss)]))
            last_values = dict(zip(names, means.tolist()))
            bad = [n for n, v in last_values.items() if not math.isfinite(v)]
            if bad:
                log.close()
                raise FloatingPointError(
                    f"step {step}: loss term {bad[0]!r} is {last_values[bad[0]]}; training stopped, last good "
                    f"checkpoint kept at {checkpoint if checkpoint.exists() else '(none yet)'}")
        if must_log:
            row = {"step": step, "lr": scheduler.get_last_lr()[0], **{f"loss/{k}": v for k, v in last_values.items()},
                   "time": time.time() - started}
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{last_values['total']:.3f}", refresh=False)
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total:
            metrics = validate()
            log.write(json.dumps({"step": step, "split": "val", **metrics}) + "\n")
            log.flush()
        if must_save and step < total:
            save_checkpoint()
    bar.close()
    metrics = validate()
    log.write(json.dumps({"step": step, "split": "val", **metrics}) + "\n")
    log.close()
    save_checkpoint()
    result = {"method": cfg.loss.method, "seed": cfg.train.seed, "steps": step, **metrics,
              "class_names": list(spec.class_names), "weights": criterion.weights, **criterion.prefit_losses(),
              "wall_time_s": time.time() - started, "config_digest": cfg.digest(),
              "run_dir": str(run_dir), **(extra or {})}
    if world > 1:
        result["processes"] = world
        result["replicas_in_sync"] = distributed.replicas_agree([*model.parameters(), *criterion.parameters()])
        if not result["replicas_in_sync"] and main:
            warnings.warn(f"{run_dir}: the {world} processes ended with different weights; model.pt is rank 0's",
                          stacklevel=2)
    if main:
        atomic_save(model.state_dict(), run_dir / MODEL)
        _update_provenance(run_dir, finished=_now())
        atomic_write_text(run_dir / RESULT, json.dumps(result, indent=2))
    distributed.barrier()  # the other ranks may read model.pt next (a teacher for the students)
    return result
