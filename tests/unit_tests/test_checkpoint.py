"""checkpoint.Checkpointer, on a real DDPEngine (one process): save writes last.pt and copies
it to best.pt on a new best; resume compares the recipe before any weights load, then restores
weights, optimizer, schedule and RNG; repair rewrites a best.pt a crash left behind."""
import os

import pytest
import torch
from torch import nn

from seltrain.checkpoint import Checkpointer, TrainState
from seltrain.config import load_config
from seltrain.distributed import DistContext
from seltrain.engine import DDPEngine
from seltrain.errors import CheckpointError

META = {"layer_names": ["0"], "arch": "none", "num_classes": 3, "in_channels": 4,
        "image_size": 1}


def _checkpointer(run, *overrides):
    cfg = load_config(None, ["train.lr=0.5", *overrides])
    torch.manual_seed(0)
    engine = DDPEngine(nn.Sequential(nn.Linear(4, 3)), cfg, DistContext(), steps_per_epoch=2)
    return Checkpointer(str(run), engine, DistContext(), cfg, META), engine


def _step(engine):
    loss = engine.network(torch.randn(8, 4)).square().mean()
    engine.backward(loss)
    engine.step()


def test_save_then_resume_restores_the_run(tmp_path):
    ck, engine = _checkpointer(tmp_path)
    assert ck.resume() == (TrainState(), None)  # nothing to resume: a fresh start
    _step(engine)
    state = TrainState(epoch=0, global_step=2, best={"epoch": 0, "val_acc": 0.5},
                       throughput=[10.0])
    last = ck.save(state, new_best=True, history=[{"epoch": 0}])
    assert last == os.path.join(tmp_path, "checkpoints", "last.pt")
    with open(last, "rb") as a, open(ck.path("best"), "rb") as b:
        assert a.read() == b.read()
    _step(engine)
    ck.save(TrainState(1, 4, state.best, [10.0, 11.0]), new_best=False, history=None)
    saved = torch.load(last, weights_only=True)
    assert (saved["epoch"], saved["global_step"], saved["arch"]) == (1, 4, "none")
    assert torch.load(ck.path("best"), weights_only=True)["epoch"] == 0
    want = {k: v.clone() for k, v in engine.network.state_dict().items()}
    draw = torch.rand(3)  # the RNG after the save: what a resumed run draws next
    lr = engine.lr()

    fresh, other = _checkpointer(tmp_path)
    torch.manual_seed(123)
    got, history = fresh.resume()
    assert got == TrainState(1, 4, {"epoch": 0, "val_acc": 0.5}, [10.0, 11.0])
    assert history is None  # the last save carried none
    assert torch.equal(torch.rand(3), draw)
    assert other.lr() == lr
    for k, v in other.network.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_resume_names_every_changed_key_before_loading(tmp_path):
    ck, _ = _checkpointer(tmp_path)
    ck.save(TrainState(0, 2, {}, []), new_best=False, history=None)
    other, engine = _checkpointer(tmp_path, "train.lr=0.1", "train.momentum=0.5",
                                  "run.progress=false")  # progress may change
    before = {k: v.clone() for k, v in engine.network.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"the recipe differs from the checkpoint's in 2 "
                                              r"key\(s\): train\.lr was 0\.5, now 0\.1; "
                                              r"train\.momentum was 0\.9, now 0\.5"):
        other.resume()
    for k, v in engine.network.state_dict().items():
        assert torch.equal(v, before[k])  # nothing was loaded


def test_resume_repairs_a_best_pt_left_behind(tmp_path, capsys):
    ck, _ = _checkpointer(tmp_path)
    ck.save(TrainState(0, 2, {"epoch": 0}, []), new_best=True, history=None)
    older = open(ck.path("best"), "rb").read()
    # epoch 1 is a new best, but the copy to best.pt never happened (a crash between them)
    ck.save(TrainState(1, 4, {"epoch": 1}, []), new_best=False, history=None)
    assert open(ck.path("best"), "rb").read() == older
    _checkpointer(tmp_path)[0].resume()
    with open(ck.path("last"), "rb") as a, open(ck.path("best"), "rb") as b:
        assert a.read() == b.read()
    assert "restored" in capsys.readouterr().err
    capsys.readouterr()
    _checkpointer(tmp_path)[0].resume()  # nothing left to repair
    assert "restored" not in capsys.readouterr().err
