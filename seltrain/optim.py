"""Optimizer and learning-rate schedule from ``TrainConfig``.

Schedules are per step (a LambdaLR factor), so warm-up and one-cycle are smooth and a resumed
run lands on exactly the same learning rate.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool) -> list[dict]:
    if not exclude_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": weight_decay}]
    # BN scales/shifts and biases (every 0/1-d parameter) are left undecayed: decaying them
    # only fights the normalisation (Goyal et al. 2017, sec. 5.1 practice).
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, t) -> torch.optim.Optimizer:
    groups = param_groups(model, t.weight_decay, t.wd_exclude_bn_bias)
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)


def lr_factor(t, steps_per_epoch: int):
    """step -> multiplier of ``t.lr``."""
    total = t.epochs * steps_per_epoch
    warm = int(round(t.warmup_epochs * steps_per_epoch))
    if t.schedule == "onecycle" and warm == 0:
        warm = int(0.3 * total)  # OneCycle's usual 30% ramp when no warm-up is given

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if t.schedule == "constant":
            return 1.0
        if t.schedule == "multistep":
            epoch = step // steps_per_epoch
            return t.gamma ** sum(epoch >= m for m in t.milestones)
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # cosine and onecycle

    return f


def build_scheduler(opt, t, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(t, steps_per_epoch))
