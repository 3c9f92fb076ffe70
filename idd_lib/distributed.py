"""Data-parallel training on PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

A run started by ``torchrun`` (which sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and the rendezvous
for one node or many) joins the process group here: NCCL on CUDA, gloo on CPU. Every helper is a
no-op in a single process, so the training loop has one code path.

``data.batch_size`` is the *global* batch: each rank takes every ``world``-th image of the same
global batch a single process would draw, so a 2-process run sees the same images per step as a
1-process run, and DDP's gradient averaging makes the step the same up to batch statistics (exact
with ``train.sync_bn``) and per-rank loss normalisation.
"""
from __future__ import annotations

import datetime
import os
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(timeout_s: float = 1800) -> None:
    """Join the process group described by torchrun's environment (idempotent)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(device())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Only rank 0 writes files and draws progress bars."""
    return rank() == 0


def device() -> torch.device:
    """This rank's device: its own GPU (``LOCAL_RANK``) under torchrun, else the default."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def average(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy; the input is unchanged)."""
    if not active():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average the gradients of modules outside the DDP-wrapped network (adapters, the
    discriminator) with one all-reduce of their flattened concatenation."""
    if not active():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a same-shaped tensor of every rank along dim 0 (rank order); not differentiable."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def replicas_agree(parameters: Iterable[torch.Tensor]) -> bool:
    """Whether every rank holds the same values (compared through per-tensor float64 sums); a
    single process trivially agrees with itself."""
    sums = torch.stack([p.detach().double().sum() for p in parameters])
    everyone = gather(sums[None])
    return bool(torch.allclose(everyone, everyone[:1].expand_as(everyone), rtol=1e-6, atol=1e-9))


def wrap(model: nn.Module, sync_bn: bool) -> nn.Module:
    """DistributedDataParallel around ``model`` (BatchNorm -> SyncBatchNorm when ``sync_bn``)."""
    if not active():
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    where = model_device(model)
    ids = [where.index] if where.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device

