"""class_selectivity against an independent NumPy implementation, gradients, dtypes."""
import numpy as np
import pytest
import torch

from seltrain.selectivity import (SelectivityAccumulator, class_selectivity, class_stats,
                                  selectivity_penalty, si_from_stats)


def numpy_si(acts: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Straight from docs/METHODS.md section 1, with loops, in float64."""
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


# --------------------------------------------------------------------------- the fused penalty

def _layers(dtype, seed=5, n=96, k=12, widths=(7, 16, 3, 33, 1)):
    """Several layers of one batch: unbalanced labels, two absent classes, dead units."""
    rng = np.random.default_rng(seed)
    p = np.arange(1, k + 1, dtype=float)
    p[[2, 9]] = 0
    labels = rng.choice(k, size=n, p=p / p.sum())
    acts = []
    for i, w in enumerate(widths):
        a = np.maximum(rng.normal(size=(n, w)) + labels[:, None] * 0.2 * rng.normal(size=w), 0)
        a[:, : i % 2] = 0  # a dead unit in every other layer
        acts.append(torch.tensor(a, dtype=dtype, requires_grad=True))
    return acts, torch.tensor(labels)


@pytest.mark.parametrize("cpu_form", [False, True])  # the GPU's form; the CPU's
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_fused_penalty_equals_per_layer_reference(dtype, tol, cpu_form, monkeypatch):
    """One one-hot, one GEMM, one si_from_stats and a segment GEMV give the per-layer form's
    numbers: mu, the per-layer means and every activation's gradient (also in the CPU form:
    SI over column blocks, of 8 units here)."""
    from seltrain import selectivity
    from seltrain.selectivity import selectivity_penalty_per_layer_reference

    monkeypatch.setattr(selectivity, "CPU_FORM", cpu_form)
    monkeypatch.setattr(selectivity, "CPU_COLUMN_BLOCK", 8)

    out = {}
    for name, fn in (("fused", selectivity_penalty),
                     ("reference", selectivity_penalty_per_layer_reference)):
        acts, y = _layers(dtype)
        mu, per_layer = fn(acts, y, 12)
        grads = torch.autograd.grad(mu * 3.0 + per_layer[1], acts)
        out[name] = (mu.detach(), per_layer.detach(), grads)
    (mu_f, pl_f, g_f), (mu_r, pl_r, g_r) = out["fused"], out["reference"]
    assert mu_f.dtype == dtype and pl_f.shape == (5,)
    assert pl_r.abs().min() > 0.01  # every layer contributes: the comparison is not vacuous
    torch.testing.assert_close(pl_f, pl_r, rtol=tol, atol=tol)
    torch.testing.assert_close(mu_f, mu_r, rtol=tol, atol=tol)
    for a, b in zip(g_f, g_r):
        assert b.abs().max() > 0 and a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()))


def test_fused_penalty_op_count_does_not_grow_with_layers(monkeypatch):
    """The point of the fusion: the forward and backward run the same ~60 ATen ops for 16
    layers as for one (the per-layer reference runs ~56 per layer), so a GPU step is no
    longer launch-bound on the regularizer. Counted with a dispatch mode: no timing. (The
    CPU form is switched off: this is the form a GPU runs.)"""
    from torch.utils._python_dispatch import TorchDispatchMode

    from seltrain import selectivity
    from seltrain.selectivity import selectivity_penalty_per_layer_reference

    monkeypatch.setattr(selectivity, "CPU_FORM", False)

    class CountOps(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            is_view = not func._schema.is_mutable and any(r.alias_info
                                                          for r in func._schema.returns)
            self.n += not is_view  # views launch no kernel
            return func(*args, **(kwargs or {}))

    def ops(fn, widths):
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 1000, (32,), generator=g)
        acts = [torch.rand(32, w, generator=g).requires_grad_() * 1 for w in widths]
        fn(acts, y, 1000)  # warm the segment-matrix cache
        with CountOps() as c:
            mu, _ = fn(acts, y, 1000)
            torch.autograd.grad(mu, acts)
        return c.n

    resnet50 = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    fused_16, fused_1 = ops(selectivity_penalty, resnet50), ops(selectivity_penalty, [256])
    ref_16 = ops(selectivity_penalty_per_layer_reference, resnet50)
    assert fused_16 <= fused_1 + 1 <= 70, (fused_16, fused_1)  # + 1: the concatenation
    assert ref_16 >= 16 * 40, ref_16


def test_accumulator_fused_update_equals_per_layer():
    """All layers in one [K, sum U] buffer (one GEMM per batch) give each layer's own float64
    statistics; updating a subset of the layers still works (layer by layer)."""
    acts, y = _layers(torch.float32, seed=6)
    names = [f"l{i}" for i in range(len(acts))]
    acc = SelectivityAccumulator({n: a.shape[1] for n, a in zip(names, acts)}, 12)
    singles = {n: SelectivityAccumulator({n: a.shape[1]}, 12) for n, a in zip(names, acts)}
    for lo in range(0, 96, 40):
        batch = {n: a.detach()[lo:lo + 40] for n, a in zip(names, acts)}
        acc.update(batch, y[lo:lo + 40])
        for n in names:
            singles[n].update({n: batch[n]}, y[lo:lo + 40])
    si = acc.si()
    for n in names:
        torch.testing.assert_close(acc.sums[n], singles[n].sums[n], rtol=1e-15, atol=1e-12)
        torch.testing.assert_close(si[n], singles[n].si()[n], rtol=1e-13, atol=1e-13)
    assert acc.flat.shape == (12, sum(a.shape[1] for a in acts))
    assert torch.equal(acc.counts, torch.bincount(y, minlength=12).double())
    partial_acc = SelectivityAccumulator({"l1": 16, "l3": 33}, 12)
    partial_acc.update({"l3": acts[3].detach(), "l1": acts[1].detach()}, y)
    torch.testing.assert_close(partial_acc.si()["l3"], si["l3"], rtol=1e-12, atol=1e-12)


def test_accumulator_read_is_si_on_the_host_with_the_extra_values():
    """read(): per-layer means, their mean and per-unit SI, equal to si()'s, and the extra
    tensors' values, all from one transfer."""
    acts, y = _layers(torch.float32, seed=7)
    names = [f"l{i}" for i in range(len(acts))]
    acc = SelectivityAccumulator({n: a.shape[1] for n, a in zip(names, acts)}, 12)
    acc.update({n: a.detach() for n, a in zip(names, acts)}, y)
    extra = torch.tensor([41.0, 96.0], dtype=torch.float64)
    out, got = acc.read(1e-7, extra)
    assert list(got) == [41.0, 96.0]
    si = acc.si(1e-7)
    assert list(out) == ["si_per_layer", "si", "si_units", "dead_per_layer"]
    assert list(out["si_units"]) == names
    for n in names:
        assert out["si_per_layer"][n] == si[n].mean().item()
        assert np.array_equal(out["si_units"][n], si[n].numpy())
    assert out["si"] == np.mean([si[n].mean().item() for n in names])
    assert len(acc.read()[1]) == 0


def test_probe_mean_is_float32_under_bf16_autocast():
    """Under bf16 autocast a conv unit's activation (its spatial mean) is taken in float32:
    exactly the float32 mean of the bf16 feature map, not that mean rounded to bf16."""
    from seltrain.probes import unit_activation

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 32, 3, padding=1)
    x = torch.randn(8, 3, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fmap = torch.relu(conv(x))
        act = unit_activation(fmap)
    assert fmap.dtype == torch.bfloat16 and act.dtype == torch.float32
    want = fmap.float().mean(dim=(2, 3))
    torch.testing.assert_close(act, want, rtol=1e-6, atol=1e-7)
    # What a bf16 mean would have given differs by far more: the test can tell them apart.
    assert (fmap.mean(dim=(2, 3)).float() - want).abs().max() > 1e-4
    assert unit_activation(fmap.double()).dtype == torch.float64


def test_dead_units_are_those_that_never_fired():
    """Two layers of 4 and 2 units over 6 images of 3 classes: layer a's units 1 and 3 are 0
    on every image, unit 2 only on some; layer b's unit 0 fires once, on one image."""
    acts_a = torch.tensor([[1., 0., 0., 0.], [2., 0., 3., 0.], [0.5, 0., 0., 0.],
                           [1., 0., 0., 0.], [4., 0., 1., 0.], [1., 0., 0., 0.]])
    acts_b = torch.zeros(6, 2)
    acts_b[4, 0] = 1e-30
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    acc = SelectivityAccumulator({"a": 4, "b": 2}, 3)
    acc.update({"a": acts_a[:3], "b": acts_b[:3]}, labels[:3])
    acc.update({"a": acts_a[3:], "b": acts_b[3:]}, labels[3:])
    assert acc.dead().tolist() == [False, True, False, True, False, True]
    out, _ = acc.read()
    assert out["dead_per_layer"] == {"a": 0.5, "b": 0.5}
    # A dead unit's SI is 0 (it pulls the layer's mean SI down without being unselective).
    assert out["si_units"]["a"][1] == 0.0 and out["si_units"]["a"][3] == 0.0


RESNET50_BLOCKS = {f"layer{s}.{i}": w for s, (n, w) in
                   enumerate(((3, 256), (4, 512), (6, 1024), (3, 2048)), 1) for i in range(n)}


def test_stage_mean_weighs_resnet50s_stages_a_quarter_each():
    from seltrain.selectivity import layer_weights

    assert layer_weights(RESNET50_BLOCKS, "block") is None  # a plain mean: 1/16 a block
    w = dict(zip(RESNET50_BLOCKS, layer_weights(RESNET50_BLOCKS, "stage")))
    for s, n in ((1, 3), (2, 4), (3, 6), (4, 3)):
        stage = [v for k, v in w.items() if k.startswith(f"layer{s}.")]
        assert len(stage) == n and sum(stage) == pytest.approx(0.25)
        assert stage == [pytest.approx(1 / (4 * n))] * n
    # Blocks: layer3 holds 6 of the 16 blocks, 37.5% of mu_SI; stages: 25%.
    assert 6 / 16 == 0.375 and sum(v for k, v in w.items() if k.startswith("layer3")) == \
        pytest.approx(0.25)
    # The stem is a stage of its own, and blocks of unequal width pool by units.
    assert layer_weights({"stem": 4, "a.0": 2, "a.1": 6}, "stage") == [0.5, 2 / 16, 6 / 16]


def test_stage_mean_is_the_co_authors_pooled_stage_mean():
    """The regularizer and the accumulator with stage weights equal SI pooled over each
    stage's units, then averaged over stages, computed here directly."""
    from seltrain.selectivity import layer_weights

    widths = (5, 5, 8, 8, 8, 3)
    names = ["l1.0", "l1.1", "l2.0", "l2.1", "l2.2", "l3.0"]
    acts, y = _layers(torch.float64, seed=3, widths=widths)
    w = layer_weights(dict(zip(names, widths)), "stage")
    mu, per_layer = selectivity_penalty(acts, y, 12, weights=w)
    units = [class_selectivity(a, y, 12) for a in acts]
    pooled = [torch.cat(units[:2]).mean(), torch.cat(units[2:5]).mean(), units[5].mean()]
    assert mu.item() == pytest.approx(torch.stack(pooled).mean().item(), rel=1e-12)
    plain, _ = selectivity_penalty(acts, y, 12)
    assert plain.item() == pytest.approx(per_layer.mean().item(), rel=1e-12)
    assert abs(plain.item() - mu.item()) > 1e-3  # the stage mean is a different number
    acc = SelectivityAccumulator(dict(zip(names, widths)), 12)
    acc.update({n: a.detach() for n, a in zip(names, acts)}, y)
    out, _ = acc.read(weights=w)
    assert out["si"] == pytest.approx(mu.item(), rel=1e-12)
