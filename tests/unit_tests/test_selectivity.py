"""class_selectivity against an independent NumPy implementation, gradients, dtypes."""
import numpy as np
import pytest
import torch

from seltrain.selectivity import (SelectivityAccumulator, class_selectivity, class_stats,
                                  selectivity_penalty, si_from_stats)


def numpy_si(acts: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Straight from METHODS.md section 1, with loops, in float64."""
    classes = sorted(set(labels.tolist()))
    out = np.zeros(acts.shape[1])
    for u in range(acts.shape[1]):
        means = np.array([acts[labels == k, u].mean() for k in classes])
        if len(means) < 2 or np.all(means == 0):
            continue
        i = int(np.argmax(means))
        mu_max = means[i]
        mu_rest = np.delete(means, i).mean()
        out[u] = (mu_max - mu_rest) / (mu_max + mu_rest + eps)
    return out


def _data(n=300, units=17, k=10, seed=0, missing=(3, 7), dead=(0, 5)):
    rng = np.random.default_rng(seed)
    # Unbalanced: class k drawn with probability ~ (k + 1); some classes absent entirely.
    p = np.arange(1, k + 1, dtype=float)
    p[list(missing)] = 0
    labels = rng.choice(k, size=n, p=p / p.sum())
    acts = np.maximum(rng.normal(size=(n, units)) + labels[:, None] * 0.3 *
                      rng.normal(size=units), 0)
    acts[:, list(dead)] = 0
    return acts, labels


def test_matches_numpy_unbalanced_missing_dead():
    acts, labels = _data()
    got = class_selectivity(torch.tensor(acts, dtype=torch.float64), torch.tensor(labels), 10)
    want = numpy_si(acts, labels)
    assert set(np.unique(labels)) == set(range(10)) - {3, 7}
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    assert got[0] == 0 and got[5] == 0  # dead units
    assert (want[1:5] > 0.01).all()  # the comparison is not vacuous


def test_true_means_not_sums():
    # Class 0 has 9 samples at activation 1, class 1 one sample at activation 1: identical
    # class means -> SI 0. Summing without dividing (the public bug) would give 0.8.
    acts = torch.ones(10, 1)
    labels = torch.tensor([0] * 9 + [1])
    assert class_selectivity(acts, labels, 2).item() == pytest.approx(0.0, abs=1e-6)


def test_one_class_only_unit_has_si_one():
    acts = torch.tensor([[5.0], [5.0], [0.0], [0.0], [0.0]])
    labels = torch.tensor([0, 0, 1, 2, 2])
    assert class_selectivity(acts, labels, 3).item() == pytest.approx(1.0, abs=1e-6)


def test_float32_and_bfloat16_inputs():
    acts, labels = _data(seed=1)
    want = numpy_si(acts, labels)
    f32 = class_selectivity(torch.tensor(acts, dtype=torch.float32), torch.tensor(labels), 10)
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32.numpy(), want, rtol=1e-4, atol=1e-5)
    x16 = torch.tensor(acts, dtype=torch.bfloat16)
    b16 = class_selectivity(x16, torch.tensor(labels), 10)
    assert b16.dtype == torch.float32  # computed in float32
    # Same as float32 on the bf16-rounded inputs: no precision is lost inside.
    np.testing.assert_allclose(b16.numpy(), numpy_si(x16.double().numpy(), labels),
                               rtol=1e-4, atol=1e-5)


def test_gradcheck_float64():
    acts, labels = _data(n=40, units=4, k=4, missing=(), dead=())
    x = torch.tensor(acts + 0.1, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(labels)
    assert torch.autograd.gradcheck(lambda a: class_selectivity(a, y, 4), (x,))


def test_dead_unit_gradient_is_finite():
    x = torch.zeros(8, 2, requires_grad=True)
    y = torch.tensor([0, 1] * 4)
    class_selectivity(x, y, 2).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_accumulator_equals_one_shot():
    acts, labels = _data(n=500, seed=3)
    acc = SelectivityAccumulator({"l": acts.shape[1]}, 10)
    for i in range(0, 500, 37):  # uneven batches
        acc.update({"l": torch.tensor(acts[i:i + 37], dtype=torch.float32)},
                   torch.tensor(labels[i:i + 37]))
    np.testing.assert_allclose(acc.si()["l"].numpy(),
                               numpy_si(acts.astype(np.float32).astype(np.float64), labels),
                               rtol=1e-9, atol=1e-12)
    # ... and differs from the average of per-batch SIs (what "exact" guards against).
    per_batch = np.mean([numpy_si(acts[i:i + 37], labels[i:i + 37])
                         for i in range(0, 500, 37)], axis=0)
    assert np.abs(per_batch - acc.si()["l"].numpy()).max() > 1e-2


def test_penalty_is_mean_of_layer_means():
    a1, labels = _data(seed=4)
    a2, _ = _data(seed=4, units=5, dead=(0,))
    y = torch.tensor(labels)
    mu, per_layer = selectivity_penalty([torch.tensor(a1), torch.tensor(a2)], y, 10)
    l1 = numpy_si(a1, labels).mean()
    l2 = numpy_si(a2, labels).mean()
    assert per_layer.tolist() == pytest.approx([l1, l2], rel=1e-6)
    assert mu.item() == pytest.approx((l1 + l2) / 2, rel=1e-6)


def test_stats_shapes_and_single_class():
    sums, counts = class_stats(torch.ones(4, 3), torch.tensor([2, 2, 2, 2]), 5)
    assert sums.shape == (5, 3) and counts.tolist() == [0, 0, 4, 0, 0]
    assert si_from_stats(sums, counts).tolist() == [0, 0, 0]  # one class: undefined -> 0
