"""seltrain/checkpoint.py: checkpoint files written whole (atomic_save / atomic_copy: a crash or
a full disk mid-write leaves the previous file as it was, no temporary is left behind, and the
file gets the umask-derived mode), their SHA-256 checked on load with NaN/inf refused, the one
best-else-last lookup for a checkpoint file, a run folder and an experiment folder, and the
Checkpointer on a real DDPEngine (one process): save writes last.pt and copies it to best.pt
on a new best; resume compares the recipe before any weights load, then restores weights,
optimizer, schedule and RNG; repair rewrites a best.pt a crash left behind."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from helpers import REPO
from seltrain import checkpoint
from seltrain.atomic import remove_stale_temporaries
from seltrain.checkpoint import (Checkpointer, TrainState, atomic_save, find_checkpoints,
                                 load_trained_model, run_checkpoint)
from seltrain.config import load_config
from seltrain.distributed import DistContext
from seltrain.engine import DDPEngine
from seltrain.errors import CheckpointError, ConfigError
from seltrain.models import build_model


# -------------------------------------------------------------------------- writing a checkpoint

def _state(epoch: int, n: int = 1000) -> dict:
    return {"model": {"w": torch.full((n,), float(epoch))}, "epoch": epoch}


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "ckpt" / "last.pt")  # the folder is made on the way
    checkpoint.atomic_save(_state(1), path)
    checkpoint.atomic_save(_state(2), path)
    got = checkpoint.load(path)
    assert got["epoch"] == 2 and torch.equal(got["model"]["w"], torch.full((1000,), 2.0))
    checkpoint.atomic_copy(path, str(tmp_path / "ckpt" / "best.pt"))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["best.pt", "last.pt"]
    assert (tmp_path / "ckpt" / "best.pt").read_bytes() == (tmp_path / "ckpt" / "last.pt") \
        .read_bytes()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoints_get_the_umask_derived_mode_not_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        checkpoint.atomic_save(_state(1), str(tmp_path / "last.pt"))
        checkpoint.atomic_copy(str(tmp_path / "last.pt"), str(tmp_path / "best.pt"))
    finally:
        os.umask(old)
    want = 0o666 & ~umask  # 0644, 0640, 0664
    assert oct(os.stat(tmp_path / "last.pt").st_mode & 0o777) == oct(want)
    assert oct(os.stat(tmp_path / "best.pt").st_mode & 0o777) == oct(want)


@pytest.mark.faults
def test_sigkill_mid_write_leaves_the_old_checkpoint_and_a_temporary_the_next_run_removes(
        tmp_path):
    path = str(tmp_path / "last.pt")
    checkpoint.atomic_save(_state(1), path)
    before = (tmp_path / "last.pt").read_bytes()
    # A real SIGKILL after 4 kB of the new checkpoint's bytes have reached the disk.
    code = ("import os, signal, sys\n"
            "from seltrain import checkpoint\n"
            "def write(f):\n"
            "    f.write(b'x' * 4096); f.flush(); os.fsync(f.fileno())\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "checkpoint._write_replace(sys.argv[1], write)\n")
    r = subprocess.run([sys.executable, "-c", code, path], cwd=REPO, capture_output=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (tmp_path / "last.pt").read_bytes() == before
    assert checkpoint.load(path)["epoch"] == 1
    left = sorted(f for f in os.listdir(tmp_path) if f != "last.pt")
    assert len(left) == 1 and re.fullmatch(r"\.last\.pt\.tmp-\d+-[0-9a-f]{8}", left[0]), left
    assert os.path.getsize(tmp_path / left[0]) == 4096
    assert remove_stale_temporaries(str(tmp_path)) == left
    assert os.listdir(tmp_path) == ["last.pt"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs of our own: a real full disk (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


@pytest.mark.faults
def test_a_full_disk_mid_write_keeps_the_old_file_and_removes_the_temporary(small_disk):
    path = str(small_disk / "last.pt")
    checkpoint.atomic_save(_state(1, n=50_000), path)  # 200 kB
    before = (small_disk / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"no space left on .* while writing last.pt; "
                                              r"the previous checkpoints are kept"):
        checkpoint.atomic_save(_state(2, n=500_000), path)  # 2 MB: the disk fills mid-write
    assert os.listdir(small_disk) == ["last.pt"]  # no temporary left
    assert (small_disk / "last.pt").read_bytes() == before
    assert checkpoint.load(path)["epoch"] == 1


# ------------------------------------------------------------------------------------- checksums

def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_digest_written_and_checked(tmp_path):
    path = str(tmp_path / "last.pt")
    weights = _model().state_dict()
    checkpoint.atomic_save({"model": weights, "epoch": 3}, path)
    ckpt = checkpoint.load(path)
    assert ckpt["model_sha256"] == checkpoint.weights_digest(weights)
    assert len(ckpt["model_sha256"]) == 64


def test_digest_sees_one_changed_value_and_dtype():
    weights = _model().state_dict()
    base = checkpoint.weights_digest(weights)
    changed = {k: v.clone() for k, v in weights.items()}
    changed["0.weight"][0, 0, 0, 0] += 1e-6
    assert checkpoint.weights_digest(changed) != base
    assert checkpoint.weights_digest({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                      for k, v in weights.items()}) != base


def test_a_tampered_value_is_refused_naming_the_file(tmp_path):
    path = str(tmp_path / "last.pt")
    weights = _model().state_dict()
    digest = checkpoint.weights_digest(weights)
    weights["0.bias"][0] = 7.0  # written with the digest of the original weights
    torch.save({"model": weights, "model_sha256": digest}, path)
    with pytest.raises(CheckpointError, match=r"last.pt is damaged \(its weights do not match "
                                              r"the checksum .*use checkpoints/best.pt"):
        checkpoint.load(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_with_or_without_digest(tmp_path, value):
    weights = _model().state_dict()
    weights["1.weight"][2] = value
    path = str(tmp_path / "best.pt")
    torch.save({"model": weights}, path)  # an older checkpoint: no digest
    with pytest.raises(CheckpointError, match=r"best.pt is damaged \(non-finite values in "
                                              r"1.weight\); analyse checkpoints/last.pt"):
        checkpoint.load(path)


def test_checkpoints_without_a_digest_still_load(tmp_path):
    path = str(tmp_path / "old.pt")
    torch.save({"model": _model().state_dict(), "epoch": 1}, path)
    assert checkpoint.load(path)["epoch"] == 1


# ----------------------------------------------------------- finding and loading a trained model

def _touch(path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return os.path.abspath(path)


def test_best_else_last_in_a_run_and_in_every_trial(tmp_path):
    run = tmp_path / "run"
    last = _touch(run / "checkpoints" / "last.pt")
    assert run_checkpoint(str(run)) == last
    best = _touch(run / "checkpoints" / "best.pt")
    assert run_checkpoint(str(run)) == best
    assert run_checkpoint(str(run), ("last.pt",)) == last
    assert find_checkpoints(str(run)) == [(str(run), best)]
    assert find_checkpoints(last) == [(str(run), last)]  # a file: its run folder

    exp = tmp_path / "exp"
    b = _touch(exp / "trials" / "b" / "checkpoints" / "last.pt")
    a = _touch(exp / "trials" / "a" / "checkpoints" / "best.pt")
    os.makedirs(exp / "trials" / "c")  # a trial that wrote no checkpoint yet: skipped
    assert find_checkpoints(str(exp)) == [(str(exp / "trials" / "a"), a),
                                          (str(exp / "trials" / "b"), b)]
    with pytest.raises(CheckpointError, match="no checkpoint, run folder or experiment"):
        find_checkpoints(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="holds no checkpoints/best.pt"):
        find_checkpoints(str(exp / "trials" / "c"))


def test_checkpoint_picks_a_kept_epoch_of_a_run_or_of_every_trial(tmp_path):
    """``--checkpoint epoch_002`` (find_checkpoints' ``which``): each trial's epoch_002.pt; a
    trial without one is skipped with the epochs it kept; the folders of the results."""
    from types import SimpleNamespace

    from seltrain.analysis.outputs import final_folder

    exp = tmp_path / "exp"
    a = _touch(exp / "trials" / "a" / "checkpoints" / "epoch_002.pt")
    _touch(exp / "trials" / "a" / "checkpoints" / "best.pt")
    _touch(exp / "trials" / "b" / "checkpoints" / "epoch_000.pt")
    _touch(exp / "trials" / "b" / "checkpoints" / "best.pt")
    skipped = []
    assert find_checkpoints(str(exp), skipped, "epoch_002") == [(str(exp / "trials" / "a"), a)]
    assert skipped == [(str(exp / "trials" / "b"), "no checkpoints/epoch_002.pt (kept epochs: "
                        "epoch_000; run.keep_epochs names the epochs a run keeps)")]
    last = _touch(exp / "trials" / "b" / "checkpoints" / "last.pt")
    assert find_checkpoints(str(exp / "trials" / "b"), which="last") == \
        [(str(exp / "trials" / "b"), last)]
    with pytest.raises(CheckpointError, match=r"b has no checkpoints/epoch_002.pt \(kept "
                       r"epochs: epoch_000;"):
        find_checkpoints(str(exp / "trials" / "b"), which="epoch_002")
    with pytest.raises(ConfigError, match="is a checkpoint file already; leave --checkpoint"):
        find_checkpoints(a, which="epoch_002")
    # kept: every kept epoch of every trial, in epoch order (10 after 2, not before it)
    a10 = _touch(exp / "trials" / "a" / "checkpoints" / "epoch_010.pt")
    b0 = str(exp / "trials" / "b" / "checkpoints" / "epoch_000.pt")
    assert find_checkpoints(str(exp), which="kept") == [
        (str(exp / "trials" / "a"), a), (str(exp / "trials" / "a"), a10),
        (str(exp / "trials" / "b"), b0)]
    opts = SimpleNamespace(out=None)
    run = str(exp / "trials" / "a")
    assert final_folder(run, opts, "ablation", 1, a) == \
        os.path.join(run, "analysis", "epoch_002", "ablation")
    assert final_folder(run, opts, "ablation", 1, os.path.join(run, "checkpoints", "best.pt")) \
        == os.path.join(run, "analysis", "ablation")
    out = SimpleNamespace(out=str(tmp_path / "o"))
    assert final_folder(run, out, "ablation", 3, a) == str(tmp_path / "o" / "a" / "epoch_002")


def test_load_trained_model_builds_the_recipe_model_or_says_it_does_not_fit(tmp_path):
    cfg = load_config(None, ["model.arch=resnet20", "data.dataset=synthetic"])
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3, 16)
    ckpt = {"config": cfg.to_dict(), "arch": "resnet20", "num_classes": 10, "in_channels": 3,
            "image_size": 16, "model": model.state_dict()}
    atomic_save(ckpt, str(tmp_path / "run" / "checkpoints" / "best.pt"))
    loaded, got, got_cfg = load_trained_model(str(tmp_path / "run"))
    assert not loaded.training and got_cfg.model.arch == "resnet20" and got["image_size"] == 16
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    atomic_save(dict(ckpt, num_classes=100), str(tmp_path / "bad.pt"))
    with pytest.raises(CheckpointError, match="does not match a seltrain model") as e:
        load_trained_model(str(tmp_path / "bad.pt"))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------- Checkpointer

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
                                  "run.progress=false",  # progress may change
                                  "run.keep_epochs=[3]")  # and the epochs kept from now on
    before = {k: v.clone() for k, v in engine.network.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"the recipe differs from the checkpoint's in 2 "
                                              r"key\(s\): train\.lr was 0\.5, now 0\.1; "
                                              r"train\.momentum was 0\.9, now 0\.5"):
        other.resume()
    for k, v in engine.network.state_dict().items():
        assert torch.equal(v, before[k])  # nothing was loaded


def test_kept_epochs_are_copies_of_their_last_pt_and_a_resume_restores_a_lost_one(
        tmp_path, capsys):
    ck, _ = _checkpointer(tmp_path, "run.keep_epochs=[0,2]")
    copies = {}
    for e in range(3):
        ck.save(TrainState(e, 2 * e + 2, {}, []), new_best=False, history=None)
        copies[e] = open(ck.path("last"), "rb").read()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["epoch_000.pt", "epoch_002.pt",
                                                            "last.pt"]
    assert open(ck.path("epoch_000"), "rb").read() == copies[0]
    assert open(ck.path("epoch_002"), "rb").read() == copies[2]
    # a crash between last.pt and its copy: the resume makes the copy, once
    os.remove(ck.path("epoch_002"))
    state, _ = _checkpointer(tmp_path, "run.keep_epochs=[0,2]")[0].resume()
    assert state.epoch == 2 and open(ck.path("epoch_002"), "rb").read() == copies[2]
    assert "epoch_002.pt from last.pt (epoch 2 is in run.keep_epochs; the copy had not been " \
        "made)" in capsys.readouterr().err


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
