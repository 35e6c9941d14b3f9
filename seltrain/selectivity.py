"""The class selectivity index (SI) and the regularizer built on it.

Morcos et al. 2018; Leavitt & Morcos, ICLR 2021 (docs/METHODS.md sections 1-2). For one unit with
class-conditional mean activations mu_k over the classes k present in a sample set:

    SI = (mu_max - mu_-max) / (mu_max + mu_-max + eps)

where mu_-max is the mean of the *other* present classes' means. Means are true means (class
sums divided by class counts): a public implementation sums without dividing, which biases SI
whenever classes are unbalanced, and we deliberately do not copy it.

Everything here is written on class *statistics* (per-class sums [K, U] and counts [K]) so the
same code serves a mini-batch (differentiable, for the regularizer), a whole dataset streamed
batch by batch (exact reported SI), and the multi-rank case, where sums and counts are summed
across ranks before SI is taken.

The regularizer is fused across layers (``selectivity_penalty``): every probed layer's units
are concatenated into one [N, sum U] matrix, so one one-hot, one GEMM, one (optional)
all-reduce and one ``si_from_stats`` serve all layers, and the per-layer means come from one
GEMV. SI is per unit, so concatenating units changes no number. The per-layer form
(``selectivity_penalty_per_layer_reference``) launches about 30 forward and 40 backward kernels
per layer (~1,100 per step for ResNet50's 16 blocks), which on a GPU leaves the step
launch-bound and puts many tiny kernels first in the backward pass.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "class_selectivity",
    "class_stats",
    "si_from_stats",
    "selectivity_penalty",
    "SelectivityAccumulator",
]


def _compute_dtype(t: Tensor) -> torch.dtype:
    # bf16/fp16 activations are promoted: the max/mean-of-rest subtraction loses most of its
    # bits in 8-bit mantissas. float64 stays float64 so gradcheck can run.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def class_stats(acts: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class activation sums [K, U] and sample counts [K] of ``acts`` [N, U].

    A one-hot matmul rather than ``index_add_``: it is deterministic on CUDA (no atomics) and
    differentiable with respect to ``acts``.
    """
    if acts.dim() != 2:
        raise ValueError(f"acts must be [N, U], got shape {tuple(acts.shape)}")
    dtype = _compute_dtype(acts)
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype)  # [N, K]
    sums = onehot.t() @ acts.to(dtype)
    counts = onehot.sum(0)
    return sums, counts


def si_from_stats(sums: Tensor, counts: Tensor, *, eps: float = 1e-7) -> Tensor:
    """SI per unit [U] from class sums [K, U] and counts [K].

    Only classes with a non-zero count take part. Written with masks, not boolean indexing,
    so it never syncs the host on a GPU and keeps a static shape for torch.compile.
    Conventions: a dead unit (every present class mean is 0) gets SI = 0; with fewer than two
    classes present SI is undefined and is reported as 0. The rows of absent classes are sums
    over no samples, hence 0, so the sum over present classes needs no mask.
    """
    present = counts > 0  # [K]
    n_present = present.sum()
    means = sums / counts.clamp(min=1).unsqueeze(1)  # [K, U]; absent rows are 0
    neg_inf = torch.finfo(means.dtype).min
    mu_max = torch.where(present.unsqueeze(1), means, neg_inf).max(dim=0).values  # [U]
    total = means.sum(dim=0)  # absent rows add exact zeros (a mask would cost a [K, U] pass)
    mu_rest = (total - mu_max) / (n_present - 1).clamp(min=1).to(means.dtype)
    si = (mu_max - mu_rest) / (mu_max + mu_rest + eps)
    alive = (mu_max > 0) & (n_present >= 2)
    # torch.where (not multiplication) so a dead unit's 0/eps cannot leak NaN gradients.
    return torch.where(alive, si, torch.zeros_like(si))


def class_selectivity(acts: Tensor, labels: Tensor, num_classes: int, *, eps: float = 1e-7,
                      sync: str = "local") -> Tensor:
    """Per-unit class selectivity index [U] of activations ``acts`` [N, U]; differentiable.

    ``sync="global"`` sums the class statistics over all ranks of the default process group
    with an autograd-aware all-reduce (its backward is also an all-reduce, as the caller may
    use the result differently on each rank), so every rank gets the SI of the global batch;
    ``"local"`` uses this rank's slice only.
    """
    sums, counts = class_stats(acts, labels, num_classes)
    if sync == "global":
        from seltrain.distributed import all_reduce_stats

        (sums,), counts = all_reduce_stats([sums], counts, replicated=False)
    elif sync != "local":
        raise ValueError(f"sync must be 'global' or 'local', got {sync!r}")
    return si_from_stats(sums, counts, eps=eps)


StatsReducer = Callable[[list[Tensor], Tensor], tuple[list[Tensor], Tensor]]

# [sum U, L] matrices of 1/U_l: the per-layer means of a concatenated [sum U] vector as one
# GEMV (deterministic, no atomics, one kernel each way). Cached because building one on a GPU
# from a Python list is a host-to-device copy, i.e. a sync, every step.
_SEGMENT_MEANS: dict[tuple, Tensor] = {}


def _segment_mean_matrix(widths: tuple[int, ...], dtype: torch.dtype, device) -> Tensor:
    key = (widths, dtype, str(device))
    m = _SEGMENT_MEANS.get(key)
    if m is None:
        m = torch.zeros(sum(widths), len(widths), dtype=dtype)
        off = 0
        for i, w in enumerate(widths):
            m[off:off + w, i] = 1.0 / w
            off += w
        m = m.to(device)
        if len(_SEGMENT_MEANS) > 64:  # a long-lived process probing many models
            _SEGMENT_MEANS.clear()
        _SEGMENT_MEANS[key] = m
    return m


def stage_of(layer: str) -> str:
    """The stage a probed layer belongs to: its name up to the first dot (``layer3.2`` ->
    ``layer3``; ``stem``, cnn7's and the VGGs' layers are each a stage of their own)."""
    return layer.split(".", 1)[0]


def layer_weights(widths: dict[str, int], layer_mean: str = "block") -> list[float] | None:
    """The weight of each layer's mean SI in mu_SI (``selectivity.layer_mean``), in the order
    of ``widths`` ({layer: units}); None for ``block`` (every layer alike: a plain mean).

    ``stage``, as the co-authors' code (Omkar-Ranadive/Class-Selective-Neurons,
    ``trainer_reg_v2.py``) computes it: the units of a stage's blocks are pooled into one mean,
    then the stages are averaged. A layer's weight is therefore its share of its stage's units
    over the number of stages: ResNet50's four stages weigh 25% each, where ``block`` weighs
    layer3's 6 of 16 blocks 37.5%. Stages of equal-width blocks (every ResNet) make the
    pooled mean the mean of the block means."""
    if layer_mean == "block":
        return None
    stages: dict[str, int] = {}
    for name, units in widths.items():
        stages[stage_of(name)] = stages.get(stage_of(name), 0) + int(units)
    return [int(u) / (len(stages) * stages[stage_of(n)]) for n, u in widths.items()]


def selectivity_penalty(layer_acts: Sequence[Tensor], labels: Tensor, num_classes: int, *,
                        eps: float = 1e-7, reduce: StatsReducer | None = None,
                        weights: Sequence[float] | None = None) -> tuple[Tensor, Tensor]:
    """mu_SI = mean over layers of (mean over units of SI), and the per-layer means [L];
    with ``weights`` (``layer_weights``, one per layer) mu_SI is their weighted sum instead.

    Fused across layers (module docstring): the layers' units are concatenated into one
    [N, sum U] matrix, so the class statistics are one GEMM with one shared one-hot (the counts
    are the same for every layer), SI is one ``si_from_stats`` on [K, sum U], and the per-layer
    means one GEMV. ``reduce`` (the global mode) receives that one [K, sum U] buffer and the
    counts, so a multi-rank run pays one collective per step whatever the number of layers.
    Equal to ``selectivity_penalty_per_layer_reference`` (values and gradients: float64 to
    1e-12, float32 to rounding; tests/unit_tests/test_selectivity.py).
    """
    if not layer_acts:
        raise ValueError("selectivity_penalty needs at least one layer's activations")
    widths = tuple(a.shape[1] for a in layer_acts)
    acts = layer_acts[0] if len(layer_acts) == 1 else torch.cat(list(layer_acts), dim=1)
    sums, counts = class_stats(acts, labels, num_classes)
    if reduce is not None:
        (sums,), counts = reduce([sums], counts)
    si = _si_in_column_blocks(sums, counts, eps)  # [sum U]
    per_layer = si @ _segment_mean_matrix(widths, si.dtype, si.device)
    if weights is not None:
        return per_layer @ _weight_vector(tuple(weights), per_layer.dtype, per_layer.device), \
            per_layer
    return per_layer.mean(), per_layer


def _weight_vector(weights: tuple[float, ...], dtype: torch.dtype, device) -> Tensor:
    # Cached as the segment matrices are: a fresh host-to-device copy each step is a sync.
    key = ("weights", weights, dtype, str(device))
    w = _SEGMENT_MEANS.get(key)
    if w is None:
        w = _SEGMENT_MEANS[key] = torch.tensor(weights, dtype=dtype).to(device)
    return w


# The CPU form. A GPU is launch-bound on the regularizer and takes the fused form as it is.
# A CPU is not, and there si_from_stats' ~20 [K, sum U] passes (forward and backward) over
# the whole buffer (ResNet50 at 1000 classes: 60 MB a pass) made the fused form slower than
# the per-layer one; over contiguous column blocks that stay in cache it is not
# (benchmarks/bench_step.py --compare-per-layer: "penalty_ms_fwd_bwd"). SI is per column, so
# the blocks change no number.
CPU_FORM = True
CPU_COLUMN_BLOCK = 256


def _si_in_column_blocks(sums: Tensor, counts: Tensor, eps: float) -> Tensor:
    if not (CPU_FORM and sums.device.type == "cpu") or sums.shape[1] <= CPU_COLUMN_BLOCK:
        return si_from_stats(sums, counts, eps=eps)
    return torch.cat([si_from_stats(s.contiguous(), counts, eps=eps)
                      for s in sums.split(CPU_COLUMN_BLOCK, dim=1)])


def selectivity_penalty_per_layer_reference(layer_acts: Sequence[Tensor], labels: Tensor,
                                            num_classes: int, *, eps: float = 1e-7,
                                            reduce: StatsReducer | None = None
                                            ) -> tuple[Tensor, Tensor]:
    """The regularizer computed layer by layer: one one-hot, GEMM and ``si_from_stats`` per
    layer. Kept ONLY as the reference that the tests and ``benchmarks/bench_step.py
    --compare-per-layer`` hold the fused ``selectivity_penalty`` against; do not train with it.
    """
    stats = [class_stats(a, labels, num_classes) for a in layer_acts]
    sums = [s for s, _ in stats]
    counts = stats[0][1]
    if reduce is not None:
        sums, counts = reduce(sums, counts)
    per_layer = torch.stack([si_from_stats(s, counts, eps=eps).mean() for s in sums])
    return per_layer.mean(), per_layer


class SelectivityAccumulator:
    """Exact dataset-level SI: class sums and counts streamed over many batches.

    Accumulates in float64 so the order of batches (or of ranks) moves the result by at most
    ~1e-16 relative, and reported SI is the SI of true dataset class means, not an average of
    per-batch SIs (docs/METHODS.md section 1, "Reported selectivity").

    Every layer's sums live in one [K, sum U] buffer (``flat``; ``sums[name]`` are column views
    of it), so a batch is one GEMM, a multi-rank evaluation all-reduces one buffer, and SI is
    one ``si_from_stats``, as in the fused regularizer.
    """

    def __init__(self, layer_units: dict[str, int], num_classes: int, device=None):
        self.num_classes = num_classes
        self.names = list(layer_units)
        self.widths = [int(layer_units[n]) for n in self.names]
        self.flat = torch.zeros(num_classes, sum(self.widths), dtype=torch.float64,
                                device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.sums = dict(zip(self.names, self._split(self.flat)))

    def _split(self, t: Tensor) -> list[Tensor]:
        return list(t.split(self.widths, dim=-1))

    @torch.no_grad()
    def update(self, layer_acts: dict[str, Tensor], labels: Tensor) -> None:
        onehot = torch.nn.functional.one_hot(labels.long(), self.num_classes).to(torch.float64)
        if list(layer_acts) == self.names:
            acts = torch.cat([layer_acts[n] for n in self.names], dim=1).to(torch.float64)
            self.flat.addmm_(onehot.t(), acts)
        else:  # a subset of the layers (or another order): layer by layer
            for name, acts in layer_acts.items():
                self.sums[name].addmm_(onehot.t(), acts.to(torch.float64))
        self.counts += onehot.sum(0)

    def si(self, eps: float = 1e-7) -> dict[str, Tensor]:
        return dict(zip(self.names, self._split(si_from_stats(self.flat, self.counts, eps=eps))))

    def class_means(self) -> dict[str, Tensor]:
        c = self.counts.clamp(min=1).unsqueeze(1)
        return dict(zip(self.names, self._split(self.flat / c)))

    def read(self, eps: float = 1e-7, *also: Tensor, weights: Sequence[float] | None = None):
        """The dataset SI on the host, read from the device in one transfer together with the
        float64 tensors ``also`` (returned flat, as a numpy array): ({"si_per_layer": {name:
        mean SI over its units}, "si": the mean over layers, "si_units": {name: per-unit SI},
        "dead_per_layer": {name: the fraction of its units that never fired (``dead``)}},
        also's values). ``weights`` (``layer_weights``) weigh the layers in "si"."""
        import numpy as np

        si = self.si(eps)
        means = torch.stack([v.mean() for v in si.values()])
        dead = torch.stack([d.to(torch.float64).mean() for d in self._split(self.dead())])
        head = [t.reshape(-1) for t in also]
        k = sum(t.numel() for t in head)
        host = torch.cat([*head, means, dead, *si.values()]).cpu().numpy()
        n = len(si)
        per_layer = {name: float(v) for name, v in zip(si, host[k:k + n])}
        dead_per_layer = {name: float(v) for name, v in zip(si, host[k + n:k + 2 * n])}
        units = np.split(host[k + 2 * n:], np.cumsum(self.widths)[:-1])
        mean = float(np.mean(list(per_layer.values()))) if weights is None else \
            float(np.dot(list(per_layer.values()), weights))
        return ({"si_per_layer": per_layer, "si": mean,
                 "si_units": dict(zip(si, units)), "dead_per_layer": dead_per_layer},
                host[:k])

    def dead(self) -> Tensor:
        """[sum U] bool: the units that never fired on any image seen. A probe reads a
        post-ReLU unit's spatial mean, >= 0 and 0 only where every position is 0, so a unit
        is dead exactly when all its class sums are 0 (sums of non-negative numbers). SI
        counts such a unit as 0 (``si_from_stats``), which lowers mean SI without any unit
        becoming less selective: docs/training.md, "Dead units"."""
        return (self.flat.abs().sum(0) == 0)
