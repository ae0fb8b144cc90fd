"""The training step, the epoch loop and evaluation.

`train_step` is the whole per-batch work (normalise on the device, mixup/cutmix, autocast, gradient
accumulation, scaler, clipping, optimizer, per-iteration LR, EMA) and nothing else, so a benchmark can
time it against a bare PyTorch loop. Nothing in it synchronises with the device: losses and accuracy
counts stay tensors until someone asks for a number.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from models import PreprocessSpec, normalize_batch

from .distributed import all_reduce_sum


@dataclass
class StepParts:
    """Everything one optimizer step touches."""

    model: nn.Module  # what forward runs on: the network, or its DDP / torch.compile wrapper
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    preprocess: PreprocessSpec
    device: torch.device
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    ema: AveragedModel | None = None
    network: nn.Module | None = None  # the unwrapped network (what EMA averages); defaults to model
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    accum_steps: int = 1
    grad_clip: float | None = None
    mix: Callable | None = None  # v2.MixUp / v2.CutMix / v2.RandomChoice of them, on the device batch
    trainable: list[nn.Parameter] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.network = self.network if self.network is not None else self.model
        self.trainable = [p for p in self.network.parameters() if p.requires_grad]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def prepare_batch(parts: StepParts, images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW from the loader -> normalised float32 on the device (channels_last if asked)."""
    x = normalize_batch(images.to(parts.device, non_blocking=True), parts.preprocess)
    if parts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_step(parts: StepParts, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; returns (mean loss, number of correct top-1 predictions).

    With `accum_steps` k the batch is split into k interleaved micro-batches (`x[i::k]`), which are
    exactly the shards k DDP processes would see: one process accumulating k micro-batches equals k
    processes.
    """
    x = prepare_batch(parts, images)
    hard = labels.to(parts.device, non_blocking=True)
    targets = hard
    if parts.mix is not None:
        x, targets = parts.mix(x, hard)
    k = parts.accum_steps
    total_loss = torch.zeros((), device=parts.device)
    correct = torch.zeros((), device=parts.device, dtype=torch.int64)
    parts.optimizer.zero_grad(set_to_none=True)
    for i in range(k):
        xi, ti, hi = (x, targets, hard) if k == 1 else (x[i::k], targets[i::k], hard[i::k])
        sync = contextlib.nullcontext() if i == k - 1 or not hasattr(parts.model, "no_sync") else parts.model.no_sync()
        with sync:
            with parts.autocast():
                logits = parts.model(xi)
                loss = parts.criterion(logits, ti)
            scaled = loss / k
            (parts.scaler.scale(scaled) if parts.scaler is not None else scaled).backward()
        total_loss += scaled.detach()
        correct += (logits.detach().argmax(1) == hi).sum()
    if parts.scaler is not None:
        if parts.grad_clip:
            parts.scaler.unscale_(parts.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(parts.trainable, parts.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        if parts.grad_clip:
            torch.nn.utils.clip_grad_norm_(parts.trainable, parts.grad_clip)
        parts.optimizer.step()
    if parts.scheduler is not None:
        parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update_parameters(parts.network)
    return total_loss, correct


@dataclass
class EpochResult:
    loss: float
    top1: float
    images: int
    seconds: float
    steps: int  # optimizer steps run in this call
    interrupted: bool = False


def train_one_epoch(
    parts: StepParts,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    set_train_mode: Callable[[], None],
    on_log: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
    log_every: int = 10,
) -> EpochResult:
    """Run `train_step` over `batches`. Every `log_every` steps `on_log(steps, loss, img/s)` is called
    (the only point that reads numbers back from the device) and `should_stop(steps)` may end the
    epoch early, between two optimizer steps."""
    set_train_mode()
    loss_sum = torch.zeros((), device=parts.device)
    correct = torch.zeros((), device=parts.device, dtype=torch.int64)
    images_seen = steps = 0
    start = window_start = time.perf_counter()
    window_images = 0
    interrupted = False
    for images, labels in batches:
        step_loss, step_correct = train_step(parts, images, labels)
        loss_sum += step_loss
        correct += step_correct
        steps += 1
        images_seen += len(labels)
        window_images += len(labels)
        if steps % log_every == 0:
            now = time.perf_counter()
            if on_log is not None:
                on_log(steps, float(step_loss), window_images / max(now - window_start, 1e-9))
            window_start, window_images = now, 0
        if should_stop is not None and should_stop(steps):
            interrupted = True
            break
    # Every rank runs the same number of steps on equal shards: sums over ranks give global means.
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    stats = all_reduce_sum(torch.stack([loss_sum.float(), correct.float()]))
    return EpochResult(
        loss=float(stats[0]) / max(steps * world, 1),
        top1=100.0 * float(stats[1]) / max(images_seen * world, 1),
        images=images_seen * world,
        seconds=time.perf_counter() - start,
        steps=steps,
        interrupted=interrupted,
    )


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    parts: StepParts,
) -> dict[str, float]:
    """Top-1, top-5 and mean cross-entropy over every validation image exactly once (summed over ranks)."""
    model.eval()
    sums = torch.zeros(4, device=parts.device, dtype=torch.float64)  # loss, top1, top5, count
    for images, labels in batches:
        x = prepare_batch(parts, images)
        y = labels.to(parts.device, non_blocking=True)
        with parts.autocast():
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(y[:, None])
        sums += torch.stack(
            [
                nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                torch.tensor(float(len(y)), device=parts.device, dtype=torch.float64),
            ]
        )
    sums = all_reduce_sum(sums)
    count = max(float(sums[3]), 1.0)
    return {
        "top1": 100.0 * float(sums[1]) / count,
        "top5": 100.0 * float(sums[2]) / count,
        "loss": float(sums[0]) / count,
        "images": int(sums[3]),
    }
