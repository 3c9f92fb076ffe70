"""One training loop for the teacher and every distillation method, and the evaluator.

``train`` is device-agnostic (CUDA when present, else CPU), uses bf16 autocast on CUDA, SGD with
the poly schedule, logs JSON lines, checkpoints atomically and resumes from its last checkpoint.
Which losses run is decided by the method registry (:mod:`idd_lib.losses`), never here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex
from tqdm import tqdm

from .config import RunConfig
from .data.datasets import IGNORE_INDEX, build_dataset, dataset_spec, eval_loader, train_loader
from .losses import DistillationCriterion
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


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device, amp: bool = True) -> dict[str, Any]:
    """Single-scale whole-image mIoU (torchmetrics, ignore 255). Classes absent from both labels
    and predictions of the whole set are NaN and left out of the mean."""
    was_training = model.training
    model.eval()
    jaccard = MulticlassJaccardIndex(num_classes, average="none", ignore_index=IGNORE_INDEX,
                                     zero_division=float("nan")).to(device)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(images)["out"]
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        jaccard.update(logits.argmax(1), labels)
    iou = jaccard.compute().cpu()
    model.train(was_training)
    return {"miou": float(torch.nanmean(iou)) * 100, "per_class_iou": [float(v) * 100 for v in iou]}


def _poly(total: int, power: float):
    return lambda step: (1 - step / total) ** power


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(), "python": random.getstate()[1]}


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.asarray(state["numpy"], dtype=np.uint32), *np_state[2:]))
    py_state = random.getstate()
    random.setstate((py_state[0], tuple(state["python"]), py_state[2]))


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
          progress: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` (distilling from ``teacher`` when the method needs one) into ``run_dir``.

    Writes config.json, provenance.json, metrics.jsonl, checkpoint.pt, model.pt and result.json.
    A finished run (result.json present) is returned as is; an interrupted one resumes.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / RESULT).exists() and resume:
        return json.loads((run_dir / RESULT).read_text())
    started = time.time()
    device = resolve_device(cfg.train.device)
    amp = cfg.train.amp and device.type == "cuda"
    seed_everything(cfg.train.seed)
    spec = dataset_spec(cfg.data)
    train_set = build_dataset(cfg.data, "train", train=True, seed=cfg.train.seed)
    val_set = build_dataset(cfg.data, "val", train=False)

    model = build_segmentor(cfg.model, spec.num_classes).to(device)
    teacher_channels = teacher.feature_channels if teacher is not None else None
    criterion = DistillationCriterion(cfg.loss, spec.num_classes, model.feature_channels, teacher_channels).to(device)
    if criterion.needs_teacher:
        teacher = teacher.to(device).eval().requires_grad_(False)
    params = [p for p in (*model.parameters(), *criterion.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    total = cfg.train.iterations
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _poly(total, cfg.train.poly_power))

    step = 0
    checkpoint = run_dir / CHECKPOINT
    if resume and checkpoint.exists():
        state = load_state(checkpoint)
        model.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
        step = state["step"]
        started -= state.get("elapsed", 0.0)
    else:
        (run_dir / METRICS).unlink(missing_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, default=str))
        atomic_write_text(run_dir / "provenance.json", json.dumps(provenance(device), indent=2))

    def save_checkpoint() -> None:
        atomic_save({"model": model.state_dict(), "criterion": criterion.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": _rng_state(), "step": step, "elapsed": time.time() - started}, checkpoint)

    pin = device.type == "cuda"
    loader = train_loader(train_set, cfg.data, total, cfg.train.seed, start_step=step, pin_memory=pin)
    val = eval_loader(val_set, cfg.data, pin_memory=pin)
    model.train()
    criterion.train()
    log = (run_dir / METRICS).open("a")
    bar = tqdm(total=total, initial=step, disable=not progress, desc=f"{cfg.loss.method} s{cfg.train.seed}",
               file=sys.stderr, mininterval=2.0, dynamic_ncols=True)
    last_values: dict[str, float] = {}
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            student_out = model(images)
            teacher_out = None
            if criterion.needs_teacher:
                with torch.no_grad():
                    teacher_out = teacher(images)
            loss, values = criterion(student_out, teacher_out, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        # Reading a value forces a host sync: on CUDA only at log/checkpoint steps.
        must_log = step % cfg.train.log_every == 0 or step == total
        must_save = cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0
        if must_log or must_save or device.type == "cpu":
            last_values = {name: float(v.detach()) for name, v in values.items()}
            last_values["total"] = float(loss.detach())
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
            metrics = evaluate(model, val, spec.num_classes, device, amp)
            log.write(json.dumps({"step": step, "split": "val", **metrics}) + "\n")
            log.flush()
        if must_save and step < total:
            save_checkpoint()
    bar.close()
    metrics = evaluate(model, val, spec.num_classes, device, amp)
    log.write(json.dumps({"step": step, "split": "val", **metrics}) + "\n")
    log.close()
    save_checkpoint()
    atomic_save(model.state_dict(), run_dir / MODEL)
    result = {"method": cfg.loss.method, "seed": cfg.train.seed, "steps": step, **metrics,
              "class_names": list(spec.class_names), "weights": criterion.weights,
              "wall_time_s": time.time() - started, "config_digest": cfg.digest(),
              "run_dir": str(run_dir), **(extra or {})}
    atomic_write_text(run_dir / RESULT, json.dumps(result, indent=2))
    return result
