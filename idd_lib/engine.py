"""One training loop for the teacher and every distillation method, and the evaluator.

``train`` is device-agnostic (CUDA when present, else CPU), uses bf16 autocast, channels_last and
optionally ``torch.compile`` on CUDA, SGD with the poly schedule, logs JSON lines, checkpoints
atomically and resumes from its last checkpoint. Under ``torchrun`` the same loop runs data-parallel
(:mod:`idd_lib.distributed`): DDP, rank-sharded batches, metrics reduced over ranks, rank 0 writes.
Which losses run is decided by the method registry (:mod:`idd_lib.losses`), never here.
"""
from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex
from tqdm.auto import tqdm  # a notebook bar in Jupyter, text on stderr elsewhere

from . import distributed, preemption
from .config import EvalConfig, RunConfig, check_limits
from .data.datasets import (IGNORE_INDEX, DatasetSpec, SegmentationDataset, build_dataset, dataset_spec, eval_loader,
                            train_loader)
from .losses import DistillationCriterion
from .inference import check_eval_config, predict
from .models import Segmentor, build_segmentor
from .preemption import stop_requests
from .provenance import provenance
from .rundir import (CHECKPOINT, CONFIG, METRICS, MODEL, PROVENANCE, RESULT, MetricsLog,  # noqa: F401
                     atomic_save, atomic_write_text, drop_rows_after, load_run_state, load_state, make_folder, now,
                     read_result, restore_rng, rng_state, update_provenance, write_result)



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


def require_finite_weights(model: nn.Module, step: int, checkpoint: Path) -> None:
    """The per-step check reads the losses, which the last update comes after: a step that turned
    the weights non-finite must not end as a finished run (its mIoU would be argmax of NaN)."""
    state = [t for t in model.state_dict().values() if t.is_floating_point()]
    if not all(bool(torch.isfinite(t).all()) for t in state):
        raise FloatingPointError(
            f"step {step}: the network's weights are not finite after its last update; training stopped, "
            f"last good checkpoint kept at {checkpoint if checkpoint.exists() else '(none yet)'}; "
            "lower train.lr or the loss weights")


def load_model(run_dir: Path, cfg: RunConfig, device: torch.device | str = "cpu") -> Segmentor:
    """The final network of a finished run, checked against the config it should match."""
    num_classes = dataset_spec(cfg.data).num_classes
    model = build_segmentor(cfg.model, num_classes)
    path = Path(run_dir) / MODEL
    try:
        state = load_run_state(path, f"delete the folder {Path(run_dir)} to train this run again")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no trained model here (run not finished?)") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise ValueError(f"{path}: checkpoint does not match the configured architecture with {num_classes} classes "
                         f"({first})") from None
    return model.to(device).eval()


@dataclass
class TrainingRun:
    """What the loop of one run works on: built by :func:`setup`, advanced by :func:`train`."""
    cfg: RunConfig
    folder: Path
    device: torch.device
    memory_format: torch.memory_format
    spec: DatasetSpec
    train_set: SegmentationDataset
    val_set: SegmentationDataset
    model: Segmentor                      # the student (or the teacher being trained)
    network: nn.Module                    # the model as stepped: DDP-wrapped and/or compiled
    teacher: nn.Module | None             # the frozen teacher as called (compiled when asked)
    criterion: DistillationCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    started: float
    step: int = 0
    rng_state: dict[str, Any] | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def amp(self) -> bool:
        return self.cfg.train.amp and self.cfg.train.accelerated(self.cuda)

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT


def _device(cfg: RunConfig) -> torch.device:
    device = resolve_device(cfg.train.device)
    return distributed.device() if distributed.world_size() > 1 and device.type == "cuda" else device


def setup(cfg: RunConfig, folder: Path, teacher: Segmentor | None, fresh: bool) -> TrainingRun:
    """Data, networks, loss terms and optimiser of a run, in the order that fixes its random draws."""
    started, device = time.time(), _device(cfg)
    cuda = device.type == "cuda"
    channels_last = cfg.train.channels_last and cfg.train.accelerated(cuda)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if cfg.train.cpu_amp and not cuda and cfg.train.amp and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn("train.cpu_amp: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is emulated and "
                      "slower than fp32; set train.cpu_amp=false", stacklevel=3)
    torch.backends.cudnn.benchmark = cuda  # fixed training crops: the autotuned kernels are reused
    # every rank draws the same random numbers (dropout, CIRKD's queue keys), so replicated state stays equal
    seed_everything(cfg.train.seed)
    spec = dataset_spec(cfg.data)
    train_set = build_dataset(cfg.data, "train", train=True, seed=cfg.train.seed)
    val_set = build_dataset(cfg.data, "val", train=False)
    for split in (train_set, val_set):
        split.require_labels()
    val_set.require_one_size()
    check_eval_config(cfg.train.eval)
    # ImageNet initialisation only for a fresh start: a resumed run loads its own weights
    model = build_segmentor(cfg.model, spec.num_classes, pretrained=fresh).to(device, memory_format=memory_format)
    teacher_channels = teacher.feature_channels if teacher is not None else None
    criterion = DistillationCriterion(cfg.loss, spec.num_classes, model.feature_channels, teacher_channels).to(device)
    if criterion.needs_teacher:
        # eval mode: the teacher returns only what the losses read ("out", "feat"; no auxiliary head)
        teacher = teacher.to(device, memory_format=memory_format).eval().requires_grad_(False)
    if distributed.world_size() > 1 and cfg.train.sync_bn and not cuda and distributed.is_main():
        warnings.warn("train.sync_bn: PyTorch's SyncBatchNorm needs CUDA; this CPU (gloo) run keeps "
                      "per-process BatchNorm statistics", stacklevel=3)
    network = distributed.wrap(model, cfg.train.sync_bn and cuda)
    if cfg.train.compile:
        network = torch.compile(network)
        teacher = torch.compile(teacher) if criterion.needs_teacher else teacher
    # terms that train modules with their own optimiser (the adversarial discriminator) keep them out
    params = [p for p in (*model.parameters(), *criterion.student_parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _poly(cfg.train.iterations, cfg.train.poly_power))
    return TrainingRun(cfg, folder, device, memory_format, spec, train_set, val_set, model, network, teacher,
                       criterion, optimizer, scheduler, started)


def resume_or_start(run: TrainingRun, resume: bool) -> None:
    """Load the run's checkpoint when resuming from one (its log trimmed to it), else write its
    config and provenance: only rank 0 writes."""
    main, cfg = distributed.is_main(), run.cfg
    if resume and run.checkpoint.exists():
        state = load_run_state(run.checkpoint, "delete it to restart this run from step 0")
        for name in ("model", "criterion", "optimizer", "scheduler"):
            getattr(run, name).load_state_dict(state[name])
        run.rng_state, run.step = state["rng"], state["step"]
        run.started -= state.get("elapsed", 0.0)
        if main:
            drop_rows_after(run.folder / METRICS, run.step, final=run.step == cfg.train.iterations)
            update_provenance(run.folder, resumed_at=run.step)
    elif main:
        (run.folder / METRICS).unlink(missing_ok=True)
        atomic_write_text(run.folder / CONFIG, json.dumps(cfg.to_dict(), indent=2, default=str))
        atomic_write_text(run.folder / PROVENANCE, json.dumps(
            {**provenance(run.device), "seed": cfg.train.seed, "processes": distributed.world_size()}, indent=2))


def save_checkpoint(run: TrainingRun) -> None:
    if distributed.is_main():
        atomic_save({"model": run.model.state_dict(), "criterion": run.criterion.state_dict(),
                     "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                     "rng": rng_state(), "step": run.step, "elapsed": time.time() - run.started}, run.checkpoint)


def read_values(run: TrainingRun, loss: torch.Tensor, values: dict[str, torch.Tensor]) -> dict[str, float]:
    """The terms' and the total's mean over ranks (one all-reduce: every rank logs, and stops on,
    the same values); a non-finite one stops the run."""
    names = [*values, "total"]
    means = distributed.average(torch.stack([v.detach().float() for v in (*values.values(), loss)]))
    read = dict(zip(names, means.tolist()))
    bad = [n for n, v in read.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"step {run.step}: loss term {bad[0]!r} is {read[bad[0]]}; training stopped, last good checkpoint "
            f"kept at {run.checkpoint if run.checkpoint.exists() else '(none yet)'}")
    return read


def validate(run: TrainingRun, on_evaluate: Callable[[nn.Module], dict[str, float]] | None,
             loader) -> dict[str, Any]:
    metrics = evaluate(run.model, loader, run.spec.num_classes, run.device, run.amp, run.cfg.train.eval)
    if on_evaluate is not None:
        with torch.random.fork_rng(devices=[]):  # an analysis hook must not change the training's dropout draws
            metrics.update(on_evaluate(run.model))
    return metrics


def evaluate_tune(run: TrainingRun) -> dict[str, Any]:
    """The final model on the synthetic benchmark's held-out ``tune`` split (``tune_miou``,
    ``tune_per_class_iou``): what tuning selects by, so that ``val`` stays unseen by any choice.
    Empty for real data or ``data.synthetic.num_tune=0``."""
    cfg = run.cfg
    if cfg.data.dataset != "synthetic" or cfg.data.synthetic.num_tune == 0:
        return {}
    loader = eval_loader(build_dataset(cfg.data, "tune", train=False), pin_memory=run.cuda,
                         rank=distributed.rank(), world=distributed.world_size())
    metrics = evaluate(run.model, loader, run.spec.num_classes, run.device, run.amp, cfg.train.eval)
    return {"tune_miou": metrics["miou"], "tune_per_class_iou": metrics["per_class_iou"]}


def finish(run: TrainingRun, metrics: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """The final checkpoint, model.pt, provenance and result.json (rank 0); the result on every rank."""
    cfg, world = run.cfg, distributed.world_size()
    save_checkpoint(run)
    result = {"method": cfg.loss.method, "seed": cfg.train.seed, "steps": run.step, **metrics,
              "class_names": list(run.spec.class_names), "weights": run.criterion.weights,
              **run.criterion.prefit_losses(), "wall_time_s": time.time() - run.started,
              "config_digest": cfg.digest(), "run_dir": str(run.folder), **(extra or {})}
    if world > 1:
        result["processes"] = world
        result["replicas_in_sync"] = distributed.replicas_agree([*run.model.parameters(), *run.criterion.parameters()])
        if not result["replicas_in_sync"] and distributed.is_main():
            warnings.warn(f"{run.folder}: the {world} processes ended with different weights; model.pt is rank 0's",
                          stacklevel=3)
    if distributed.is_main():
        atomic_save(run.model.state_dict(), run.folder / MODEL)
        update_provenance(run.folder, finished=now())
        write_result(run.folder, result)
    distributed.barrier()  # the other ranks may read model.pt next (a teacher for the students)
    return result


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
    folder = Path(run_dir)
    if (folder / RESULT).exists() and resume:
        return read_result(folder)
    check_limits(cfg)
    run = setup(cfg, folder, teacher, fresh=not (resume and (folder / CHECKPOINT).exists()))
    make_folder(folder)  # only now: a run refused by its data checks leaves no folder
    resume_or_start(run, resume)
    # after loading a checkpoint: a resumed run's modules are fitted already
    prefit_terms(run.criterion, run.teacher, run.train_set, cfg, run.device, run.memory_format, run.amp)
    total, main = cfg.train.iterations, distributed.is_main()
    loader = train_loader(run.train_set, cfg.data, total, cfg.train.seed, start_step=run.step, pin_memory=run.cuda,
                          rank=distributed.rank(), world=distributed.world_size())
    val = eval_loader(run.val_set, pin_memory=run.cuda, rank=distributed.rank(), world=distributed.world_size())
    run.model.train()
    run.criterion.train()
    log = MetricsLog(folder, enabled=main)
    label = "teacher" if (extra or {}).get("role") == "teacher" else f"{cfg.loss.method} s{cfg.train.seed}"
    bar = tqdm(total=total, initial=run.step, disable=not (progress and main), desc=label, mininterval=2.0,
               dynamic_ncols=True)
    if on_evaluate is not None and cfg.train.eval_every and run.step == 0:
        with torch.random.fork_rng(devices=[]):  # the curve's starting point, without changing the run
            log.write({"step": 0, "split": "val", **validate(run, on_evaluate, val)})
    batches = iter(loader)
    if run.rng_state is not None:  # only now: creating the data iterator draws from the global RNG
        restore_rng(run.rng_state)
    with log, bar, stop_requests() as stops:
        for images, labels in batches:
            images = images.to(run.device, non_blocking=True, memory_format=run.memory_format)
            loss, values = training_step(run.network, run.teacher, run.criterion, run.optimizer, images,
                                         labels.to(run.device, non_blocking=True), run.amp)
            run.scheduler.step()
            run.step += 1
            bar.update(1)
            # Reading a value forces a host sync: on CUDA only at log/checkpoint steps.
            must_log = run.step % cfg.train.log_every == 0 or run.step == total
            must_save = cfg.train.checkpoint_every and run.step % cfg.train.checkpoint_every == 0
            if must_log or must_save or not run.cuda:
                read = read_values(run, loss, values)
            if must_log:
                log.write({"step": run.step, "lr": run.scheduler.get_last_lr()[0],
                           **{f"loss/{k}": v for k, v in read.items()}, "time": time.time() - run.started})
                bar.set_postfix(loss=f"{read['total']:.3f}", refresh=False)
            if cfg.train.eval_every and run.step % cfg.train.eval_every == 0 and run.step < total:
                log.write({"step": run.step, "split": "val", **validate(run, on_evaluate, val)})
            if must_save and run.step < total:
                save_checkpoint(run)
            signum = stops.pending() if run.step < total else 0
            if signum:  # the scheduler's pre-emption or time limit: keep this step, stop
                save_checkpoint(run)
                preemption.stop(stops, signum, run.step, run.checkpoint)
        require_finite_weights(run.model, run.step, run.checkpoint)
        metrics = validate(run, on_evaluate, val)
        log.write({"step": run.step, "split": "val", **metrics})
        tune = evaluate_tune(run)
        if tune:
            log.write({"step": run.step, "split": "tune", "miou": tune["tune_miou"],
                       "per_class_iou": tune["tune_per_class_iou"]})
    return finish(run, {**metrics, **tune}, extra)
