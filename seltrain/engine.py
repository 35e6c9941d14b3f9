"""Engines: how a step's backward, optimizer step and checkpoint state are carried out.

``DDPEngine`` (one process or torch DDP) and ``DeepSpeedEngine`` share one small interface:
``backward(loss)``, ``step()``, ``no_sync()``, ``save(path, extra)``, ``load(path)``. The
training loop calls only these.
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from seltrain import checkpoint
from seltrain.optim import build_optimizer, build_scheduler


class DDPEngine:
    name = "ddp"

    def __init__(self, model: nn.Module, cfg, ctx, steps_per_epoch: int):
        t = cfg.train
        self.ctx = ctx
        self.module = model
        if t.sync_bn and ctx.distributed:
            self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
        if ctx.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        else:
            self.model = self.module
        self.optimizer = build_optimizer(self.module, t)
        self.scheduler = build_scheduler(self.optimizer, t, steps_per_epoch)
        self.grad_clip = t.grad_clip

    def forward_model(self) -> nn.Module:
        return self.model

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def no_sync(self):
        return self.model.no_sync() if self.ctx.distributed else contextlib.nullcontext()

    def save(self, path: str, extra: dict) -> None:
        # DDP replicas are identical: rank 0 writes one file.
        if self.ctx.is_main:
            state = dict(extra, model=self.module.state_dict(),
                         optimizer=self.optimizer.state_dict(),
                         scheduler=self.scheduler.state_dict(), engine=self.name)
            checkpoint.atomic_save(state, path)

    def load(self, path: str) -> dict:
        ckpt = checkpoint.load(path, map_location=self.ctx.device)
        self.module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        return ckpt

    @staticmethod
    def exists(path: str) -> bool:
        return os.path.isfile(path)


def build_engine(model: nn.Module, cfg, ctx, steps_per_epoch: int):
    if cfg.train.engine == "deepspeed":
        from seltrain.engine_deepspeed import DeepSpeedEngine

        return DeepSpeedEngine(model, cfg, ctx, steps_per_epoch)
    return DDPEngine(model, cfg, ctx, steps_per_epoch)
