"""RankSharding: the one definition of which samples each rank sees, the base of the global-SI
equivalence (G ranks together see the batch one process would) and of exact sharded eval."""
import numpy as np
import torch

from seltrain.data.loaders import RankSharding, epoch_generator


def _epoch(world: int, indices: np.ndarray, batch: int, seed: int = 3, epoch: int = 1,
           drop_last: bool = True) -> list[list[np.ndarray]]:
    """Every rank's batches of one epoch: [rank][step] -> indices."""
    return [RankSharding(r, world).train_batches(indices, batch, epoch_generator(seed, epoch),
                                                 drop_last)
            for r in range(world)]


def test_ranks_together_see_the_single_process_global_batches_in_order():
    indices = np.arange(100, 200)  # 100 samples that are not their own positions
    single = _epoch(1, indices, 24)[0]  # one process, global batch 24
    ranks = _epoch(4, indices, 6)  # four ranks, local batch 6: the same global batch
    assert len(single) == 4 and all(len(r) == 4 for r in ranks)  # 100 // 24 full batches
    for step, batch in enumerate(single):
        # Rank r holds the r-th slice of the global batch, in the same order.
        assert np.array_equal(np.concatenate([ranks[r][step] for r in range(4)]), batch)
        assert all(len(ranks[r][step]) == 6 for r in range(4))
    # The order is the seeded permutation of the epoch: the same generator, the same order.
    perm = indices[torch.randperm(100, generator=epoch_generator(3, 1)).numpy()]
    assert np.array_equal(np.concatenate(single), perm[:96])


def test_shards_of_an_epoch_are_disjoint_and_drop_only_the_last_partial_global_batch():
    indices = np.arange(103)
    ranks = _epoch(3, indices, 5)  # global batch 15: 6 full batches, 13 samples dropped
    seen = np.concatenate([b for r in ranks for b in r])
    assert [len(r) for r in ranks] == [6, 6, 6]
    assert len(seen) == 90 and len(np.unique(seen)) == 90  # no sample twice
    assert set(seen) <= set(indices.tolist())
    # Another epoch is another permutation; the same epoch again is the same one.
    again, other = _epoch(3, indices, 5), _epoch(3, indices, 5, epoch=2)
    assert all(np.array_equal(a, b) for ra, rb in zip(ranks, again) for a, b in zip(ra, rb))
    assert not np.array_equal(ranks[0][0], other[0][0])


def test_without_drop_last_the_partial_global_batch_is_split_over_every_rank():
    indices = np.arange(103)
    ranks = _epoch(3, indices, 5, drop_last=False)
    # 13 left over: 5, 4, 4 (np.array_split), so every rank takes the same 7 steps.
    assert [len(r) for r in ranks] == [7, 7, 7]
    assert [len(r[-1]) for r in ranks] == [5, 4, 4]
    seen = np.concatenate([b for r in ranks for b in r])
    assert np.array_equal(np.sort(seen), indices)  # every sample exactly once
    single = _epoch(1, indices, 15, drop_last=False)[0]
    assert np.array_equal(np.concatenate([r[-1] for r in ranks]), single[-1])


def test_a_leftover_smaller_than_the_world_is_dropped_so_ranks_take_equal_steps():
    # 2 samples left over for 3 ranks: one rank would take a step the others do not, and
    # DDP's gradient all-reduce would hang; so it is dropped even without drop_last.
    ranks = _epoch(3, np.arange(32), 5, drop_last=False)  # 2 full global batches + 2
    assert [len(r) for r in ranks] == [2, 2, 2]
    assert sum(len(b) for r in ranks for b in r) == 30


def test_eval_shards_are_contiguous_uneven_and_cover_every_index_once():
    # 255 samples over 2 ranks: 128 and 127, as in test_distributed_ranks.py
    indices = np.arange(50, 305)
    two = [RankSharding(r, 2).eval_indices(indices) for r in range(2)]
    assert [len(s) for s in two] == [128, 127]
    assert np.array_equal(np.concatenate(two), indices)  # contiguous, in order, no padding
    four = [RankSharding(r, 4).eval_indices(indices) for r in range(4)]
    assert [len(s) for s in four] == [64, 64, 64, 63]
    assert np.array_equal(np.concatenate(four), indices)
    # More ranks than samples: the surplus ranks get empty shards, never repeats.
    few = [RankSharding(r, 4).eval_indices(np.arange(3)) for r in range(4)]
    assert [s.tolist() for s in few] == [[0], [1], [2], []]
    assert np.array_equal(RankSharding().eval_indices(indices), indices)  # one process: all
