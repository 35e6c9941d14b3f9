"""lr_factor: the per-step learning-rate multiplier of every schedule, at given steps."""
import math

import pytest
import torch

from seltrain.config import TrainConfig
from seltrain.optim import build_optimizer, build_scheduler, lr_factor

STEPS = 10  # steps per epoch; 10 epochs: 100 steps in all


def _f(**kw):
    return lr_factor(TrainConfig(epochs=10, **kw), STEPS)


def test_multistep_drops_by_gamma_at_each_milestone_epoch():
    f = _f(schedule="multistep", milestones=[3, 6], gamma=0.1)
    assert [f(s) for s in (0, 29)] == [1.0, 1.0]
    assert f(30) == pytest.approx(0.1) and f(59) == pytest.approx(0.1)
    assert f(60) == pytest.approx(0.01) and f(99) == pytest.approx(0.01)
    assert _f(schedule="multistep")(99) == 1.0  # no milestones: constant


def test_linear_warmup_reaches_the_full_rate_on_its_last_step():
    f = _f(schedule="multistep", milestones=[3], warmup_epochs=0.5)  # 5 warm-up steps
    assert [f(s) for s in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    g = _f(schedule="constant", warmup_epochs=1)
    assert g(0) == pytest.approx(0.1) and g(9) == 1.0 and g(50) == 1.0


def test_cosine_decays_to_zero_over_the_steps_after_warmup():
    f = _f(schedule="cosine")
    assert f(0) == 1.0 and f(50) == pytest.approx(0.5)
    assert f(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # 0.8536
    assert f(99) == pytest.approx(0.5 * (1 + math.cos(0.99 * math.pi)))  # 0.000247
    assert f(100) == pytest.approx(0.0, abs=1e-12) and f(150) == pytest.approx(0.0, abs=1e-12)
    w = _f(schedule="cosine", warmup_epochs=2)  # 20 warm-up steps, then 80 of cosine
    assert w(9) == pytest.approx(0.5) and w(19) == 1.0 and w(20) == 1.0
    assert w(60) == pytest.approx(0.5)


def test_onecycle_ramps_over_30_percent_without_a_warmup_then_anneals():
    f = _f(schedule="onecycle")  # 30 ramp steps of 100
    assert f(0) == pytest.approx(1 / 30) and f(14) == pytest.approx(0.5)
    assert f(29) == 1.0 and f(30) == 1.0
    assert f(65) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)
    g = _f(schedule="onecycle", warmup_epochs=1)  # an explicit warm-up replaces the 30%
    assert g(9) == 1.0 and g(55) == pytest.approx(0.5)


def test_the_scheduler_sets_lr_times_the_factor_after_each_step():
    t = TrainConfig(epochs=10, lr=0.2, schedule="cosine", warmup_epochs=1)
    opt = build_optimizer(torch.nn.Linear(2, 2), t)
    sched = build_scheduler(opt, t, STEPS)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(55):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.02)  # step 0 of 10 warm-up steps
    assert lrs[9] == pytest.approx(0.2) and lrs[55] == pytest.approx(0.1)  # cosine midpoint
    assert all(g["lr"] == lrs[-1] for g in opt.param_groups)  # decay and no-decay groups
