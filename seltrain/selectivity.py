"""The class selectivity index (SI) and the regularizer built on it.

Morcos et al. 2018; Leavitt & Morcos, ICLR 2021 (METHODS.md sections 1-2). For one unit with
class-conditional mean activations mu_k over the classes k present in a sample set:

    SI = (mu_max - mu_-max) / (mu_max + mu_-max + eps)

where mu_-max is the mean of the *other* present classes' means. Means are true means (class
sums divided by class counts): a public implementation sums without dividing, which biases SI
whenever classes are unbalanced, and we deliberately do not copy it.

Everything here is written on class *statistics* (per-class sums [K, U] and counts [K]) so the
same code serves a mini-batch (differentiable, for the regularizer), a whole dataset streamed
batch by batch (exact reported SI), and the multi-rank case, where sums and counts are summed
across ranks before SI is taken.
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
    classes present SI is undefined and is reported as 0.
    """
    present = counts > 0  # [K]
    n_present = present.sum()
    means = sums / counts.clamp(min=1).unsqueeze(1)  # [K, U]; absent rows are 0
    neg_inf = torch.finfo(means.dtype).min
    mu_max = torch.where(present.unsqueeze(1), means, neg_inf).max(dim=0).values  # [U]
    total = (means * present.unsqueeze(1).to(means.dtype)).sum(dim=0)
    mu_rest = (total - mu_max) / (n_present - 1).clamp(min=1).to(means.dtype)
    si = (mu_max - mu_rest) / (mu_max + mu_rest + eps)
    alive = (mu_max > 0) & (n_present >= 2)
    # torch.where (not multiplication) so a dead unit's 0/eps cannot leak NaN gradients.
    return torch.where(alive, si, torch.zeros_like(si))


def class_selectivity(acts: Tensor, labels: Tensor, num_classes: int, *, eps: float = 1e-7,
                      sync: str = "local") -> Tensor:
    """Per-unit class selectivity index [U] of activations ``acts`` [N, U]; differentiable.

    ``sync="global"`` sums the class statistics over all ranks of the default process group
    with an autograd-aware all-reduce (its backward is also an all-reduce), so every rank gets
    the SI of the global batch; ``"local"`` uses this rank's slice only.
    """
    sums, counts = class_stats(acts, labels, num_classes)
    if sync == "global":
        from seltrain.distributed import all_reduce_stats

        (sums,), counts = all_reduce_stats([sums], counts)
    elif sync != "local":
        raise ValueError(f"sync must be 'global' or 'local', got {sync!r}")
    return si_from_stats(sums, counts, eps=eps)


StatsReducer = Callable[[list[Tensor], Tensor], tuple[list[Tensor], Tensor]]


def selectivity_penalty(layer_acts: Sequence[Tensor], labels: Tensor, num_classes: int, *,
                        eps: float = 1e-7, reduce: StatsReducer | None = None
                        ) -> tuple[Tensor, Tensor]:
    """mu_SI = mean over layers of (mean over units of SI), and the per-layer means [L].

    ``reduce`` (for the global mode) receives every layer's sums plus the shared counts at
    once, so a multi-rank run pays one bucketed collective per step, not one per layer.
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
    per-batch SIs (METHODS.md section 1, "Reported selectivity").
    """

    def __init__(self, layer_units: dict[str, int], num_classes: int, device=None):
        self.num_classes = num_classes
        self.sums = {name: torch.zeros(num_classes, u, dtype=torch.float64, device=device)
                     for name, u in layer_units.items()}
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, layer_acts: dict[str, Tensor], labels: Tensor) -> None:
        onehot = torch.nn.functional.one_hot(labels.long(), self.num_classes).to(torch.float64)
        for name, acts in layer_acts.items():
            self.sums[name] += onehot.t() @ acts.to(torch.float64)
        self.counts += onehot.sum(0)

    def state(self) -> tuple[list[Tensor], Tensor]:
        return [self.sums[n] for n in self.sums], self.counts

    def load_reduced(self, sums: list[Tensor], counts: Tensor) -> None:
        for name, s in zip(self.sums, sums):
            self.sums[name] = s
        self.counts = counts

    def si(self, eps: float = 1e-7) -> dict[str, Tensor]:
        return {n: si_from_stats(s, self.counts, eps=eps) for n, s in self.sums.items()}

    def class_means(self) -> dict[str, Tensor]:
        c = self.counts.clamp(min=1).unsqueeze(1)
        return {n: s / c for n, s in self.sums.items()}
