"""Process-group setup and teardown for every launcher, and the collectives seltrain uses.

One process, torchrun, the deepspeed launcher and Ray Train all come through ``setup()``; the
training loop only ever sees the returned ``DistContext``. NCCL when CUDA is present, gloo
otherwise, one device per local rank.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from seltrain.errors import SeltrainError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"
    device: torch.device = torch.device("cpu")
    launcher: str = "single"
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return (f"[rank {self.rank}/{self.world_size}] launcher={self.launcher} "
                f"backend={self.backend} device={self.device}")


def _device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _launcher_from_env() -> str:
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        return "torchrun"
    if "DEEPSPEED_LAUNCHER" in os.environ or os.environ.get("CROSS_RANK") is not None:
        return "deepspeed"
    return "env"


def setup(timeout_s: float | None = None) -> DistContext:
    """Join (or create) the process group this process was started into."""
    if dist.is_available() and dist.is_initialized():
        # Ray Train (or a caller) made the group already: use it, and leave it to its owner.
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", 0))
        return DistContext(rank, world, local, dist.get_backend(), _device_for(local),
                           "existing", owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        device = _device_for(0) if torch.cuda.is_available() else torch.device("cpu")
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = _device_for(local)
    timeout = datetime.timedelta(seconds=timeout_s or float(
        os.environ.get("SELTRAIN_DIST_TIMEOUT", 300)))
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout,
                                device_id=device if backend == "nccl" else None)
    except Exception as e:  # noqa: BLE001 - any join failure becomes one clear line
        addr = os.environ.get("MASTER_ADDR", "?")
        port = os.environ.get("MASTER_PORT", "?")
        raise SeltrainError(
            f"rank {rank} could not join the process group at {addr}:{port} (world size "
            f"{world}) within {timeout.total_seconds():.0f}s: {str(e).splitlines()[0]}; check "
            "MASTER_ADDR/MASTER_PORT and that every node uses the same --nnodes/--nproc_per_node"
        ) from None
    return DistContext(rank, world, local, backend, device, _launcher_from_env(),
                       owns_group=True)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_stats(sums: list[Tensor], counts: Tensor, *, present_only: bool = False,
                     bf16: bool = False) -> tuple[list[Tensor], Tensor]:
    """Sum per-class statistics over ranks, with gradients: one bucketed collective.

    Every layer's [K, U_l] sums and the [K] counts are concatenated into one flat buffer and
    all-reduced once (``torch.distributed.nn.functional.all_reduce``: its backward is an
    all-reduce of the gradients, which under DDP's gradient averaging makes the result equal
    to single-process training on the concatenated batch; METHODS.md section 2).

    ``present_only`` first all-reduces the counts alone (K floats) and then ships only the
    rows of classes present in the global batch; ``bf16`` halves the payload's bytes.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sums, counts
    from torch.distributed.nn.functional import all_reduce

    if present_only:
        counts = all_reduce(counts)
        rows = (counts > 0).nonzero().squeeze(1)
        parts = [s.index_select(0, rows) for s in sums]
    else:
        parts = list(sums)
    widths = [p.shape[1] for p in parts]
    k = parts[0].shape[0]
    flat = torch.cat([p.reshape(-1) for p in parts] + ([] if present_only else [counts]))
    dtype = flat.dtype
    if bf16:
        flat = flat.to(torch.bfloat16)
    flat = all_reduce(flat).to(dtype)
    out, off = [], 0
    for w in widths:
        out.append(flat[off:off + k * w].view(k, w))
        off += k * w
    if present_only:
        full = []
        for s, o in zip(sums, out):
            full.append(torch.zeros_like(s).index_copy(0, rows, o))
        return full, counts
    return out, flat[off:]


@torch.no_grad()
def all_reduce_sum(*tensors: Tensor) -> list[Tensor]:
    """In-place, gradient-free sum across ranks (evaluation counters and statistics)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t)
    return list(tensors)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj
