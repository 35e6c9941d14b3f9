"""Engines: how a step's backward, optimizer step and checkpoint state are carried out.

``DDPEngine`` (one process or torch DDP) and ``DeepSpeedEngine`` share one small interface:
``network`` (the raw ``nn.Module``), ``forward_model()`` (the network wrapped for training: the
DDP module, or DeepSpeed's engine), ``backward(loss)``, ``step()``, ``lr()``,
``sync_buffers()``, ``save(path, extra)`` and ``load(path) -> extra``. The training loop calls
only these. Process groups and collectives are ``seltrain.distributed``'s; an engine only asks
it.

Buffers (BatchNorm running statistics) are rank 0's on every rank whenever the raw
``network`` is used alone (evaluation, the epoch hooks, the checkpoint, which rank 0 writes):
``sync_buffers()``. DDP broadcasts rank 0's buffers only at the start of each *training*
forward, so after an epoch's last step each rank's statistics also hold its own last batch;
evaluating with them would score each shard with a different network, none of them the one
in the checkpoint.

Checkpoints. Both engines leave a plain ``<name>.pt`` (model weights plus the trainer's extra
dict, loadable with ``weights_only=True``) at the path the trainer names, so ``--resume``,
``load_trained_model`` and the analyses never ask which engine wrote a run. DeepSpeed also
keeps its own sharded state (ZeRO optimizer partitions) beside it, written and read with its
``save_checkpoint``/``load_checkpoint``; the ``.pt`` file is written last and names the
DeepSpeed tag it belongs to, so it doubles as the commit marker of a complete checkpoint.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import warnings

import torch
from torch import nn

from seltrain import checkpoint, distributed
from seltrain.errors import (CheckpointError, ConfigError, is_disk_full, one_line,
                             without_source_location)
from seltrain.optim import build_optimizer, build_scheduler


def convert_sync_bn(model: nn.Module, ctx) -> nn.Module:
    """BatchNorm statistics over the global batch (``train.sync_bn``); GPU only in torch."""
    if ctx.device.type != "cuda":
        raise ConfigError("train.sync_bn needs CUDA devices (torch's SyncBatchNorm refuses "
                          f"{ctx.device.type} tensors); set train.sync_bn=false")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


class DDPEngine:
    name = "ddp"

    def __init__(self, network: nn.Module, cfg, ctx, steps_per_epoch: int):
        t = cfg.train
        self.ctx = ctx
        self.network = network
        if t.sync_bn and ctx.distributed:
            self.network = convert_sync_bn(self.network, ctx)
        self._ddp = nn.parallel.DistributedDataParallel(
            self.network, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) \
            if ctx.distributed else None
        self.optimizer = build_optimizer(self.network, t)
        self.scheduler = build_scheduler(self.optimizer, t, steps_per_epoch)
        self.grad_clip = t.grad_clip

    def forward_model(self) -> nn.Module:
        """The network as training runs it: under DDP when there are several ranks."""
        return self._ddp if self._ddp is not None else self.network

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def sync_buffers(self) -> None:
        """Rank 0's buffers on every rank (module docstring); the trainer calls it before
        evaluating. One broadcast per dtype; nothing in one process."""
        if self.ctx.distributed:
            distributed.broadcast_tensors(list(self.network.buffers()), src=0)

    def save(self, path: str, extra: dict) -> None:
        # DDP replicas are identical (parameters; buffers once sync_buffers ran, as it does
        # before every evaluation, hence before every checkpoint): rank 0 writes one file.
        if self.ctx.is_main:
            state = dict(extra, model=self.network.state_dict(),
                         optimizer=self.optimizer.state_dict(),
                         scheduler=self.scheduler.state_dict(), engine=self.name)
            checkpoint.atomic_save(state, path)

    def load(self, path: str) -> dict:
        ckpt = checkpoint.load(path, map_location=self.ctx.device)
        self.network.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        return ckpt


# Used when engine is deepspeed and neither train.deepspeed_config nor deepspeed_inline is set:
# the same as configs/deepspeed/zero1_bf16.json (ZeRO-1 partitions optimizer state only, so
# it is exact against DDP; bf16.enabled follows train.bf16 anyway).
DEFAULT_DEEPSPEED = {"zero_optimization": {"stage": 1, "overlap_comm": True,
                                           "contiguous_gradients": True},
                     "zero_allow_untested_optimizer": True, "steps_per_print": 1_000_000}


def deepspeed_config(t, world_size: int, say=print) -> dict:
    """The DeepSpeed config dict for ``TrainConfig`` ``t``: the JSON or inline dict, with the
    keys seltrain owns derived from the recipe and overwritten (``say`` reports conflicts).

    seltrain owns: the batch sizes (``train.batch_size`` is the global batch, split evenly
    over ranks, no gradient accumulation), ``gradient_clipping`` (``train.grad_clip``) and the
    precision: ``torch_autocast`` follows ``train.bf16`` and DeepSpeed's own ``bf16`` mode is
    off (``DeepSpeedEngine`` says why). The optimizer and scheduler are seltrain's own, so
    DeepSpeed ``optimizer``/``scheduler`` sections are refused rather than silently ignored.
    """
    if t.deepspeed_config and t.deepspeed_inline:
        raise ConfigError("set train.deepspeed_config or train.deepspeed_inline, not both")
    if t.deepspeed_config:
        try:
            with open(t.deepspeed_config) as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"train.deepspeed_config: no such file {t.deepspeed_config}; "
                              "see configs/deepspeed/") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"train.deepspeed_config: {t.deepspeed_config} is not valid "
                              f"JSON (line {e.lineno}: {e.msg})") from None
        where = t.deepspeed_config
    else:
        raw = copy.deepcopy(t.deepspeed_inline or DEFAULT_DEEPSPEED)
        where = "train.deepspeed_inline" if t.deepspeed_inline else "the default ZeRO-1 config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a JSON object")
    cfg = {k: v for k, v in raw.items() if not k.startswith("_")}  # "_comment" keys
    for section, key in (("optimizer", "train.optimizer/lr/momentum/weight_decay"),
                         ("scheduler", "train.schedule/milestones/warmup_epochs")):
        if section in cfg:
            raise ConfigError(f"{where} has a '{section}' section; seltrain builds it from "
                              f"{key}: remove it from the DeepSpeed config")
    if "fp16" in cfg and cfg["fp16"].get("enabled"):
        raise ConfigError(f"{where} enables fp16; seltrain trains in fp32 or bf16 "
                          "(train.bf16), remove the fp16 section")
    micro = t.batch_size // world_size
    derived = {"train_batch_size": micro * world_size, "train_micro_batch_size_per_gpu": micro,
               "gradient_accumulation_steps": 1,
               "gradient_clipping": float(t.grad_clip or 0.0)}
    for key, value in derived.items():
        if key in cfg and cfg[key] != value:
            say(f"seltrain: {where} sets {key}={cfg[key]!r}; using {value!r} derived from "
                "the seltrain config")
        cfg[key] = value
    # bf16 is torch.autocast over float32 weights, for DeepSpeed as for DDP (DeepSpeedEngine).
    if (cfg.get("bf16") or {}).get("enabled"):
        say(f"seltrain: {where} enables DeepSpeed's bf16 mode; seltrain trains bf16 with "
            "torch.autocast over float32 weights (train.bf16, the torch_autocast section), so "
            "bf16.enabled is set false")
    cfg["bf16"] = dict(cfg.get("bf16") or {}, enabled=False)
    autocast = dict(cfg.get("torch_autocast") or {})
    if "enabled" in autocast and bool(autocast["enabled"]) != t.bf16:
        say(f"seltrain: {where} sets torch_autocast.enabled={autocast['enabled']}; using "
            f"train.bf16={t.bf16}")
    if autocast.get("dtype", "bfloat16") not in ("bfloat16", "bf16", "torch.bfloat16"):
        raise ConfigError(f"{where} sets torch_autocast.dtype={autocast['dtype']!r}; seltrain "
                          "trains in fp32 or bf16 (train.bf16): remove the dtype")
    autocast.update(enabled=bool(t.bf16), dtype="bfloat16")
    cfg["torch_autocast"] = autocast
    cfg.setdefault("zero_allow_untested_optimizer", True)  # seltrain's torch SGD/Adam
    cfg.setdefault("steps_per_print", 1_000_000)
    return cfg


class DeepSpeedEngine:
    """``deepspeed.initialize`` around seltrain's model, optimizer and LR schedule.

    bf16 (``train.bf16``) is DeepSpeed's ``torch_autocast``: float32 weights, BatchNorm
    statistics and optimizer state, the forward under ``torch.autocast(bfloat16)``, the
    gradients of convolutions and linear layers reduced in bf16. DeepSpeed's ``bf16`` mode
    (bf16 weights, float32 masters in the optimizer) is not used: it casts parameters and not
    buffers, and CUDA's channels-first BatchNorm backward then fails at the first step. Its
    fused kernel picks its statistics' dtype from the weight: bf16 weights with a bf16 input
    select the all-bf16 kernel, which then reads the float32 running statistics as bf16 and
    refuses them (``batch_norm_backward_cuda``, aten/src/ATen/native/cuda/Normalization.cu).
    Channels-last takes another kernel and survives. Casting the statistics to bf16 as well
    would let the kernel run, but a running-average update below half a bf16 step of the
    statistic (2^-9 of it) is then lost: running means ended 2.3% from the true means, against
    0.24% in float32 (benchmarks/bench_bn_stats.py, 2,000 steps). Under autocast the kernel sees what
    it sees under DDP (bf16 input, float32 weight and statistics: its mixed-type path, in both
    layouts), so both engines run one bf16 arithmetic and DeepSpeed keeps its halved gradient
    bytes for the layers that hold almost all of them.
    """

    name = "deepspeed"

    def __init__(self, network: nn.Module, cfg, ctx, steps_per_epoch: int):
        import deepspeed

        t = cfg.train
        self.ctx = ctx
        # A group even for one process, and the rank variables DeepSpeed asserts.
        distributed.setup_for_deepspeed(ctx)
        if t.sync_bn and ctx.distributed:
            network = convert_sync_bn(network, ctx)
        self.ds_config = deepspeed_config(t, ctx.world_size,
                                          say=print if ctx.is_main else (lambda *_: None))
        # DeepSpeed broadcasts every parameter as a byte view at initialize, which needs a unit
        # last stride, and ZeRO-1/2 then move the parameters into one flat contiguous buffer:
        # channels_last weights pass through neither. The input carries the layout instead
        # (DevicePreprocess), and a convolution keeps a channels-last input's layout whatever
        # its weight's (cuDNN's and oneDNN's rule), so the activations stay channels-last.
        network = network.to(memory_format=torch.contiguous_format)
        optimizer = build_optimizer(network, t)
        scheduler = build_scheduler(optimizer, t, steps_per_epoch)
        # DeepSpeed's engine: it runs the forward, backward, step and its checkpoints.
        self.ds_engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=network, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            dist_init_required=False)
        self.network = self.ds_engine.module  # the module passed in, as DeepSpeed holds it
        # Synced after every step (sync_buffers): the same tensor objects for the whole run
        # (load_state_dict copies into them).
        self._buffers = list(self.network.buffers())

    def forward_model(self) -> nn.Module:
        """The network as training runs it: through DeepSpeed's engine."""
        return self.ds_engine

    def backward(self, loss: torch.Tensor) -> None:
        self.ds_engine.backward(loss)

    def step(self) -> None:
        # Clips (gradient_clipping), steps the optimizer and the LR schedule, zeroes grads.
        self.ds_engine.step()
        self.sync_buffers()

    def sync_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank. DeepSpeed never
        syncs buffers after ``initialize``, so this runs after every step, as DDP's
        ``broadcast_buffers`` does before every forward: each rank's statistics would
        otherwise follow its own shard, the sharded evaluation would mix as many networks as
        ranks, and ``--resume`` (rank 0's statistics in the checkpoint, loaded on every rank)
        would end with other numbers than an uninterrupted run. One broadcast per dtype."""
        if self.ctx.distributed:
            distributed.broadcast_tensors(self._buffers, src=0)

    def lr(self) -> float:
        return self.ds_engine.get_lr()[0]

    # Checkpoints: DeepSpeed's own state under <checkpoints>/deepspeed/<tag>/, and the plain
    # <name>.pt beside it (see the module docstring).
    @staticmethod
    def _ds_dir(path: str) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(path)), "deepspeed")

    def save(self, path: str, extra: dict) -> None:
        name = os.path.splitext(os.path.basename(path))[0]
        tag = f"{name}-step{extra.get('global_step', 0)}"
        ds_dir = self._ds_dir(path)
        # Every rank writes its ZeRO partition; client_state carries the trainer's extra.
        failure = None
        try:
            self.ds_engine.save_checkpoint(ds_dir, tag=tag, client_state=extra, save_latest=False)
        except Exception as e:  # noqa: BLE001 - reported to every rank just below
            failure = e
            # Its writes come between DeepSpeed's tag check and its closing barrier, which
            # the other ranks are now waiting in: join it, or the ranks' collectives fall out
            # of step (a hang, or garbage in the next one).
            distributed.barrier()
        self._agree_partitions_written(failure, ds_dir, name, tag)
        if self.ctx.is_main:
            weights = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                       for k, v in self.network.state_dict().items()}
            checkpoint.atomic_save(dict(extra, model=weights, engine=self.name,
                                        deepspeed_tag=tag), path)
            # Older tags of this name are superseded once the .pt naming the new one exists.
            for old in glob.glob(os.path.join(ds_dir, f"{name}-step*")):
                if os.path.basename(old) != tag:
                    shutil.rmtree(old, ignore_errors=True)

    def _agree_partitions_written(self, failure, ds_dir: str, name: str, tag: str) -> None:
        """Every rank learns whether every rank wrote its part (one all-gather, which is also
        the barrier before the ``.pt`` commits them), and all raise the same one line if one
        did not: a ``.pt`` naming an incomplete tag would break ``--resume``, and a rank left
        to train on alone would wait for the others' next collective forever."""
        mine = None
        if failure is not None:
            full = is_disk_full(failure, ds_dir)
            mine = (self.ctx.rank, full, "no space left on the device" if full
                    else f"{type(failure).__name__}: {without_source_location(one_line(failure))}")
        failed = [f for f in distributed.all_gather_objects(mine) if f is not None]
        if failed:
            rank, full, why = failed[0]
            others = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
            raise CheckpointError(
                f"rank {rank}{others} could not write its part of the DeepSpeed checkpoint "
                f"{os.path.join(ds_dir, tag)} ({why}); {name}.pt was not updated and the "
                f"previous checkpoints are kept: {'free space there' if full else 'fix that'} "
                "and continue with --resume")

    def load(self, path: str) -> dict:
        ckpt = checkpoint.load(path, map_location="cpu")
        tag = ckpt.get("deepspeed_tag")
        if ckpt.get("engine") != self.name or tag is None:
            raise CheckpointError(f"{path} was written by the {ckpt.get('engine', 'ddp')} "
                                  "engine; resume it with that engine (train.engine)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                loaded, _client = self.ds_engine.load_checkpoint(self._ds_dir(path), tag=tag)
        except Exception as e:  # noqa: BLE001 - any failure to read it means the same fix
            # e.g. optimizer state written in DeepSpeed's bf16 mode, whose files and layout
            # the autocast engine does not read
            raise CheckpointError(
                f"DeepSpeed could not load its state {tag} for {path} ({type(e).__name__}: "
                f"{without_source_location(one_line(e))}); resume it with the settings and "
                "seltrain version that wrote it, or set run.name to start a new run") from None
        if loaded is None:
            raise CheckpointError(f"DeepSpeed state {tag} for {path} is missing under "
                                  f"{self._ds_dir(path)}")
        return ckpt


def build_engine(network: nn.Module, cfg, ctx, steps_per_epoch: int):
    if cfg.train.engine == "deepspeed":
        return DeepSpeedEngine(network, cfg, ctx, steps_per_epoch)
    return DDPEngine(network, cfg, ctx, steps_per_epoch)
