"""Optimizer (parameter groups: no weight decay on norms and biases, a separate head LR) and the
per-iteration learning-rate schedule (linear warmup, then cosine, step, multistep or constant)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models.resnet import head_parameter_names

from .config import TrainConfig


def effective_lr(config: TrainConfig) -> float:
    """The recipe's LR, scaled linearly with the batch when the recipe names its reference batch."""
    lr = config.lr
    if config.lr_base_batch:
        lr *= config.batch_size / config.lr_base_batch
    return lr


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters split by (head or backbone) x (decayed or not)."""
    lr = effective_lr(config)
    head_lr = config.head_lr if config.head_lr is not None else lr
    wd = config.weight_decay
    head = set(head_parameter_names(model))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = config.no_wd_norm_bias and param.ndim <= 1  # BN gamma/beta and biases
        groups.setdefault((name in head, no_decay), []).append(param)
    return [
        {"params": params, "lr": head_lr if is_head else lr, "weight_decay": 0.0 if no_decay else wd}
        for (is_head, no_decay), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config)
    if not groups:
        raise ValueError("no trainable parameters: everything is frozen")
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=effective_lr(config), momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=effective_lr(config))


def lr_factor_fn(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """step -> multiplier of the base LR. Milestones and warmup are given in epochs, applied per step."""
    total = max(config.epochs * steps_per_epoch, 1)
    warmup = round(config.warmup_epochs * steps_per_epoch)
    start = config.warmup_start_factor
    base = effective_lr(config)
    floor = config.min_lr / base if base > 0 else 0.0
    kind = config.scheduler
    milestones = sorted(round(m * steps_per_epoch) for m in config.milestones)
    if kind == "step" and not milestones:
        milestones = [int(round(e * steps_per_epoch)) for e in range(30, config.epochs, 30)]
    gamma = config.lr_gamma

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1.0 - start) * step / warmup
        if kind == "cosine":
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind in ("step", "multistep"):
            return gamma ** sum(step >= m for m in milestones)
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step (not per epoch), so warmup and cosine are smooth."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(config, steps_per_epoch))
