"""Process-group setup and teardown for every launcher, and the collectives seltrain uses.

One process, torchrun, the deepspeed launcher and Ray Train all come through ``setup()``; the
training loop only ever sees the returned ``DistContext``. NCCL when CUDA is present, gloo
otherwise, one device per local rank.

How each launcher is recognised:
- a process group already exists (Ray Train's TorchTrainer makes one before the train loop
  runs): use it and leave its teardown to its owner;
- ``WORLD_SIZE`` > 1 in the environment: torchrun (``TORCHELASTIC_RUN_ID`` set) or the
  deepspeed launcher (``--local_rank=N`` on the command line, ``CROSS_RANK``/``LOCAL_SIZE``
  or ``DEEPSPEED_LAUNCHER`` in the environment) or any launcher that sets RANK, WORLD_SIZE,
  MASTER_ADDR and MASTER_PORT: join with ``env://``;
- otherwise: one process, no group.

Joining is bounded: ``SELTRAIN_DIST_TIMEOUT`` seconds (default 300) for the rendezvous, so a
wrong MASTER_ADDR or a mismatched world size ends in one clear error line instead of a hang.
Collectives afterwards get ``SELTRAIN_COLLECTIVE_TIMEOUT`` (default 1800 s): evaluation of a
large split or rank 0 writing a checkpoint may legitimately keep the others waiting longer
than a join should.

This is the only module that creates, joins or destroys process groups, calls collectives,
or reads or writes the rank variables (RANK, WORLD_SIZE, LOCAL_RANK, TORCHELASTIC_*): the
trainer and the engines ask ``DistContext`` and the functions below. (``seltrain.runlock``
reads TORCHELASTIC_RUN_ID/RESTART_COUNT itself to tell a restarted attempt from a second job.)
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from seltrain.errors import SeltrainError

JOIN_TIMEOUT_S = 300.0
COLLECTIVE_TIMEOUT_S = 1800.0


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"
    device: torch.device = torch.device("cpu")
    launcher: str = "single"
    # Whether teardown() destroys the group: one setup() joined, not one that a caller (Ray
    # Train) made before setup(), nor setup_for_deepspeed()'s process-wide one-rank group.
    owns_group: bool = False
    # torchrun's TORCHELASTIC_RESTART_COUNT, read once here: > 0 is a restarted attempt, which
    # continues from checkpoints/last.pt without --resume. 0 for every other launcher.
    restart_count: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return (f"seltrain: rank {self.rank} of world size {self.world_size} (local rank "
                f"{self.local_rank}), backend {self.backend}, device {self.device}, "
                f"launcher {self.launcher}")


def _device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _launcher_from_env(local_rank_arg: int | None) -> str:
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        return "torchrun"
    if (local_rank_arg is not None or "DEEPSPEED_LAUNCHER" in os.environ
            or os.environ.get("CROSS_RANK") is not None):
        return "deepspeed"
    return "env"


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise SeltrainError(f"{name} is not set, but WORLD_SIZE={os.environ['WORLD_SIZE']} "
                                "asks for a process group; start the job with torchrun or the "
                                "deepspeed launcher, or set RANK, WORLD_SIZE, MASTER_ADDR and "
                                "MASTER_PORT yourself")
        return default
    try:
        return int(raw)
    except ValueError:
        raise SeltrainError(f"{name}={raw!r} is not an integer") from None


def _timeout(name: str, default: float, given: float | None = None) -> datetime.timedelta:
    if given is not None:
        return datetime.timedelta(seconds=given)
    raw = os.environ.get(name, default)
    try:
        return datetime.timedelta(seconds=float(raw))
    except ValueError:
        raise SeltrainError(f"{name}={raw!r} is not a number of seconds") from None


# What MPI launchers export instead of torch's env:// variables: mpirun (Open MPI, and the
# deepspeed launcher's `--launcher openmpi`), MPICH and Intel MPI's mpiexec, srun --mpi=pmi2.
_MPI_WORLD_SIZE = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _refuse_mpi_without_torch_variables() -> None:
    """Processes started by MPI without WORLD_SIZE would each train alone, all writing the same
    run folder: refuse with one line naming a launcher that works."""
    if "WORLD_SIZE" in os.environ:
        return
    for name in _MPI_WORLD_SIZE:
        raw = os.environ.get(name, "")
        if raw.isdigit() and int(raw) > 1:
            raise SeltrainError(
                f"started by an MPI launcher as one of {raw} processes ({name}={raw}), but "
                "without RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, through which seltrain "
                "joins: each process would train alone; launch with torchrun or the deepspeed "
                "launcher (pdsh, or --no_ssh with --node_rank on each node), or export those "
                "four variables from your launcher")


def setup(timeout_s: float | None = None, local_rank: int | None = None) -> DistContext:
    """Join (or adopt) the process group this process was started into.

    ``local_rank`` is the deepspeed launcher's ``--local_rank=N`` argument, used when the
    environment does not carry ``LOCAL_RANK``. ``timeout_s`` overrides SELTRAIN_DIST_TIMEOUT.
    """
    restart = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    if dist.is_available() and dist.is_initialized():
        # Ray Train (or a caller) made the group already: use it, and leave it to its owner.
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK", local_rank if local_rank is not None else 0)
        return DistContext(rank, world, local, dist.get_backend(), _device_for(local),
                           "existing", owns_group=False, restart_count=restart)
    _refuse_mpi_without_torch_variables()
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        local = local_rank or 0
        device = _device_for(local)
        return DistContext(local_rank=local, device=device, restart_count=restart)
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK", local_rank if local_rank is not None else rank)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            _env_int(name)  # raises the one-line "not set" error
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = _device_for(local)
    join = _timeout("SELTRAIN_DIST_TIMEOUT", JOIN_TIMEOUT_S, timeout_s)
    try:
        # env:// reads MASTER_ADDR/MASTER_PORT; the TCPStore connect and the wait for every
        # rank both honour `timeout`, so a rank that cannot join fails within it.
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=join))
        if "TORCHELASTIC_RESTART_COUNT" in os.environ:
            # torchrun's agent store outlives a restart, and the gloo addresses of the killed
            # attempt stay in it: the new attempt would dial dead ports. A per-attempt prefix
            # keeps each attempt's keys apart (found with --max-restarts on torch 2.14).
            store = dist.PrefixStore(f"seltrain/attempt_{restart}/", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                timeout=join,
                                device_id=device if backend == "nccl" else None)
        # NCCL connects lazily: one barrier proves every rank is there, within the bound.
        dist.barrier()
    except Exception as e:  # noqa: BLE001 - any join failure becomes one clear line
        if dist.is_initialized():
            dist.destroy_process_group()
        addr = os.environ.get("MASTER_ADDR", "?")
        port = os.environ.get("MASTER_PORT", "?")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SeltrainError(
            f"rank {rank} could not join the process group at {addr}:{port} (world size "
            f"{world}) within {join.total_seconds():g}s: {first}; check MASTER_ADDR/MASTER_PORT "
            "and that every node starts the same --nnodes/--nproc_per_node"
        ) from None
    collective = _timeout("SELTRAIN_COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT_S)
    set_timeout = getattr(dist, "set_timeout", None)  # torch >= 2.9; older: join bound stays
    if set_timeout is not None:
        set_timeout(collective)
    return DistContext(rank, world, local, backend, device, _launcher_from_env(local_rank),
                       owns_group=True, restart_count=restart)


def setup_for_deepspeed(ctx: DistContext) -> None:
    """What ``deepspeed.initialize`` needs beyond ``setup()``: a process group even for one
    process, and RANK, WORLD_SIZE and LOCAL_RANK in the environment.

    One process has no group after ``setup()``; DeepSpeed insists on one (and otherwise probes
    MPI). A private one-rank group over an in-memory store needs no MASTER_ADDR or free port;
    NCCL on a GPU, as ``setup`` would choose, so DeepSpeed's collectives run on the device.
    That group lives as long as the process and serves every later DeepSpeed engine in it:
    DeepSpeed keeps module-level handles to the groups it derives from it
    (``deepspeed.utils.groups``), so after a teardown the next engine in the same process
    would fail ("Group ... is not registered"). ``teardown(ctx)`` leaves it alone.

    DeepSpeed also asserts the rank variables are set even where the group exists (Ray Train,
    one process); they are exported from ``ctx`` where unset (a launcher's own are kept).
    """
    if not dist.is_initialized():
        cuda = ctx.device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1, device_id=ctx.device if cuda else None)
    for key, value in (("LOCAL_RANK", ctx.local_rank), ("RANK", ctx.rank),
                       ("WORLD_SIZE", ctx.world_size)):
        os.environ.setdefault(key, str(value))


_PEER_FAILURE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                 "NCCL communicator was aborted", "remote process exited", "ProcessGroupGloo")


def is_peer_failure(e: BaseException) -> bool:
    """Whether a collective failed because another rank went away (its process died, its
    node was lost): gloo and NCCL report it as a transport error on the survivors."""
    dist_error = getattr(dist, "DistError", ())
    return isinstance(e, dist_error) or any(m in str(e) for m in _PEER_FAILURE)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, in place, with the sum's gradient.

    Forward: all-reduces ``t`` in place and returns it: no copy. ``t`` must be a buffer made
    for this (``all_reduce_stats`` packs a fresh one with ``torch.cat``), not a leaf or a view
    and saved by no other node; ``mark_dirty`` tells autograd, which would raise at backward
    rather than compute with overwritten values if it had been saved.

    Backward: every rank's output is y = sum_s x_s, so dL/dx_r = sum_s dL/dy_s. With
    ``replicated`` the caller promises that every rank uses y the same way (the SI term of the
    loss is the same function of the global statistics on every rank), so dL/dy_s is the same
    on every rank and the sum is world_size * dL/dy_r: no collective at all. Otherwise the
    gradients are all-reduced, into a copy (autograd may hand the same gradient tensor to
    other nodes).

    On NCCL a "synchronous" all-reduce does not stop the host: it orders the compute stream
    after the collective, which is the dependency SI has anyway (nothing in the step can run
    between the statistics and SI), so ``async_op`` would buy nothing here.
    """

    @staticmethod
    def forward(ctx, t: Tensor, replicated: bool) -> Tensor:
        ctx.replicated = replicated
        dist.all_reduce(t)
        ctx.mark_dirty(t)
        return t

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.replicated:
            return grad * dist.get_world_size(), None
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad, None


def all_reduce_stats(sums: list[Tensor], counts: Tensor, *, present_only: bool = False,
                     bf16: bool = False, max_rows: int | None = None,
                     replicated: bool = True) -> tuple[list[Tensor], Tensor]:
    """Sum per-class statistics over ranks, with gradients: one bucketed collective.

    The [K, U_l] sums (the fused regularizer passes one [K, sum U] buffer) and the [K] counts
    are packed into one fresh flat buffer and all-reduced once, in place (``_AllReduceSum``).
    Under DDP's gradient averaging the result equals single-process training on the
    concatenated batch (docs/METHODS.md section 2). ``replicated`` (default): every rank uses the
    reduced statistics the same way, so the backward pass needs no collective (see
    ``_AllReduceSum``); pass False for a rank-dependent use.

    ``present_only`` first all-reduces the counts alone (K floats) and then ships only rows of
    classes present in the global batch. With ``max_rows`` (an upper bound on the classes a
    global batch can hold: the global batch size) it ships a fixed ``max_rows`` rows, present
    classes first, which needs no host sync; when ``max_rows >= K`` nothing can be saved that
    way and the dense path is used. Without ``max_rows`` it ships exactly the present rows,
    which costs one host sync (``nonzero``) per step. ``bf16`` halves the payload's bytes;
    the class counts stay float32 (a second, K-float all-reduce), so they are exact.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sums, counts
    k = counts.shape[0]
    if present_only and max_rows is not None and max_rows >= k:
        present_only = False
    if present_only or bf16:
        # The counts travel in the payload only when it is float32 and dense. bf16 holds
        # integers exactly up to 256 only, and present-only needs them first to choose its
        # rows: then they are all-reduced on their own (K floats, float32; they come from
        # labels and never need gradients).
        counts = counts.detach().clone()
        dist.all_reduce(counts)
    flat, layout = pack_stats(sums, counts, present_only=present_only, bf16=bf16,
                              max_rows=max_rows)
    flat = _AllReduceSum.apply(flat, replicated)
    return unpack_stats(flat, layout)


def pack_stats(sums: list[Tensor], counts: Tensor, *, present_only: bool = False,
               bf16: bool = False, max_rows: int | None = None) -> tuple[Tensor, dict]:
    """The payload ``all_reduce_stats`` ships: (one fresh flat buffer, its layout for
    ``unpack_stats``). Dense: every row of every [K, U] sums tensor, then the counts (unless
    ``bf16``: they travel apart, in float32). ``present_only``: the rows of classes present in
    ``counts`` (which must be the global counts already), ``max_rows`` of them (a static size,
    no host sync) or exactly the present ones (a host sync); the counts travel apart. ``bf16``:
    the payload in bf16."""
    if present_only and max_rows is not None and max_rows >= counts.shape[0]:
        present_only = False
    rows = None
    if present_only:
        if max_rows is None:
            rows = (counts > 0).nonzero().squeeze(1)  # exactly the present rows: a host sync
        else:
            # A static row count, present classes first (ascending), then absent ones (zero
            # on every rank, so shipping them changes nothing): no host sync.
            rows = torch.sort((counts == 0).to(torch.int32), stable=True).indices[:max_rows]
        parts = [t.index_select(0, rows) for t in sums]
    else:
        parts = list(sums)
    counts_in_payload = not (present_only or bf16)
    flat = torch.cat([t.reshape(-1) for t in parts] + ([counts] if counts_in_payload else []))
    layout = {"widths": [t.shape[1] for t in parts], "n_rows": parts[0].shape[0],
              "rows": rows, "sums": sums, "counts": None if counts_in_payload else counts,
              "dtype": flat.dtype}
    return (flat.to(torch.bfloat16) if bf16 else flat), layout


def unpack_stats(flat: Tensor, layout: dict) -> tuple[list[Tensor], Tensor]:
    """``pack_stats``'s payload (after the all-reduce) back to [K, U] sums and [K] counts."""
    flat = flat.to(layout["dtype"])
    out, off, n_rows = [], 0, layout["n_rows"]
    for w in layout["widths"]:
        out.append(flat[off:off + n_rows * w].view(n_rows, w))
        off += n_rows * w
    counts = flat[off:] if layout["counts"] is None else layout["counts"]
    if layout["rows"] is not None:
        out = [torch.zeros_like(t).index_copy(0, layout["rows"], o)
               for t, o in zip(layout["sums"], out)]
    return out, counts


def _grouped() -> bool:
    """Whether collectives have peers: a process group of more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def all_reduce_sum(*tensors: Tensor) -> list[Tensor]:
    """In-place, gradient-free sum across ranks (evaluation counters and statistics)."""
    if _grouped():
        for t in tensors:
            dist.all_reduce(t)
    return list(tensors)


def barrier() -> None:
    if _grouped():
        dist.barrier()


@torch.no_grad()
def broadcast_tensors(tensors: list[Tensor], src: int = 0) -> None:
    """Rank ``src``'s values of ``tensors`` on every rank, in place: one broadcast per
    (dtype, device), the tensors packed into one flat buffer (DeepSpeed's BatchNorm buffers)."""
    if not _grouped():
        return
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    sending = dist.get_rank() == src
    for (dtype, device), group in groups.items():
        # Only the sender packs its values; the others receive into an empty buffer and
        # unpack, and the sender keeps its tensors as they are (no copy back onto itself).
        flat = torch.cat([t.detach().reshape(-1) for t in group]) if sending else \
            torch.empty(sum(t.numel() for t in group), dtype=dtype, device=device)
        dist.broadcast(flat, src=src)
        if sending:
            continue
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a group)."""
    if _grouped():
        box: list = [None] * dist.get_world_size()
        dist.all_gather_object(box, obj)
        return box
    return [obj]


def broadcast_object(obj, src: int = 0):
    if _grouped():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj
