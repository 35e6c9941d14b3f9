"""End-to-end training on synthetic data: the regularizer's direction, resume, outputs."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import REPO, TINY, run_cli, subprocess_env
from seltrain.config import load_config
from seltrain.trainer import Trainer

# 6 epochs x 40 steps = 240 steps of batch 32 at 16 px: ~10 s per run on 2 cores.
ALPHA_RUN = ["data.dataset=synthetic", "data.val_size=256", "data.synthetic.train_size=1536",
             "data.synthetic.test_size=512", "data.synthetic.image_size=16",
             "train.batch_size=32", "train.epochs=6", "train.lr=0.05", "train.schedule=cosine",
             "run.progress=false", "run.tensorboard=false"]


@pytest.mark.slow
def test_alpha_steers_selectivity(tmp_path):
    si = {}
    for alpha in (0, -10, 10):
        cfg = load_config(os.path.join(REPO, "configs/synthetic.yaml"),
                          ALPHA_RUN + [f"selectivity.alpha={alpha}", f"run.out_dir={tmp_path}",
                                       f"run.name=a{alpha}"])
        si[alpha] = Trainer(cfg).fit()["test_si"]
    # Measured: alpha -10 -> 0.005, 0 -> 0.38, +10 -> 0.81 (test SI, mean over 9 blocks).
    assert si[-10] < si[0] - 0.15, si
    assert si[10] > si[0] + 0.15, si


def _tiny(tmp_path, name, *extra):
    return ["configs/synthetic.yaml", *TINY, "train.epochs=3", "selectivity.alpha=-1",
            f"run.out_dir={tmp_path}", f"run.name={name}", *extra]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    r = run_cli("train", *_tiny(out, "ref"))
    assert r.returncode == 0, r.stderr
    return out / "ref"


def test_run_folder_contents(reference_run):
    d = reference_run
    for rel in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt",
                "checkpoints/best.pt", "tb"):
        assert (d / rel).exists(), rel
    summary = json.loads((d / "summary.json").read_text())
    for key in ("alpha", "seed", "arch", "dataset", "epochs", "best_epoch", "val_acc",
                "test_acc", "test_si", "test_si_per_layer", "images_per_s"):
        assert summary[key] is not None, key
    assert summary["alpha"] == -1.0 and summary["epochs"] == 3
    assert len(summary["test_si_per_layer"]) == 9
    lines = (d / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [0, 1, 2]
    ckpt = torch.load(d / "checkpoints/last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and "model" in ckpt and "optimizer" in ckpt
    assert load_config(str(d / "config.yaml")).selectivity.alpha == -1.0


def test_tensorboard_events_hold_expected_tags(reference_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(reference_run / "tb"), size_guidance={"scalars": 0,
                                                                    "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    for tag in ("train/loss", "train/ce", "train/reg", "train/batch_si", "train/lr",
                "train/images_per_s", "val/acc", "test/acc", "val/si_mean", "test/si_mean",
                "val/si/layer1.0", "test/si/layer3.2"):
        assert tag in scalars, tag
    assert len(acc.Scalars("test/acc")) == 3
    assert {"test/si_hist/layer1.0", "test/si_hist/layer3.2"} <= set(tags["histograms"])
    # Values agree with metrics.jsonl.
    last = json.loads((reference_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert acc.Scalars("test/acc")[-1].value == pytest.approx(last["test_acc"], abs=1e-6)
    # HParams: alpha/seed/arch against final metrics.
    hp = EventAccumulator(str(reference_run / "tb"))
    hp.Reload()
    plugin = hp.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin
    start = plugin["_hparams_/session_start_info"]
    assert b"alpha" in start and b"seed" in start and b"arch" in start


@pytest.mark.slow
def test_resume_is_bitwise_identical(reference_run, tmp_path):
    name = "interrupted"
    args = _tiny(tmp_path, name)
    proc = subprocess.Popen([sys.executable, "-m", "seltrain", "train", *args], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = tmp_path / name / "metrics.jsonl"
    last = tmp_path / name / "checkpoints/last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid epoch 2: nothing gets to clean up
    proc.wait()
    assert (tmp_path / name / "checkpoints/last.pt").exists()
    # Without --resume the run refuses to overwrite what is there.
    r = run_cli("train", *args)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = run_cli("train", *args, "--resume")
    assert r.returncode == 0, r.stderr
    a = torch.load(reference_run / "checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / name / "checkpoints/last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ra = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x["epoch"] for x in rb] == [0, 1, 2]
    for x, y in zip(ra, rb):
        for key in ("train_loss", "val_acc", "test_acc", "test_si", "lr"):
            assert x[key] == y[key], (key, x[key], y[key])


def test_corrupt_checkpoint_is_one_line(reference_run, tmp_path):
    d = tmp_path / "corrupt"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints/last.pt").write_bytes(b"not a checkpoint")
    r = run_cli("train", *_tiny(tmp_path, "corrupt"), "--resume")
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert "corrupt or unreadable" in r.stderr and "last.pt" in r.stderr


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # Epoch 1 trains normally; from epoch 2 the lr is multiplied by 1e12 and the loss blows up.
    r = run_cli("train", "configs/synthetic.yaml", *TINY, "train.epochs=3",
                "train.schedule=multistep", "train.milestones=[1]", "train.gamma=1e12",
                f"run.out_dir={tmp_path}", "run.name=nan")
    assert r.returncode == 4, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    # The loss is read every LOG_EVERY steps, so the message names the range of steps since
    # the last check: epoch 2 holds global steps 6-11 (6 steps per epoch).
    assert len(err) == 1 and "in epoch 2, steps 0-5 (global steps 6-11)" in err[0], r.stderr
    ckpt = torch.load(tmp_path / "nan/checkpoints/last.pt", weights_only=True)
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_eval_test_at_best_evaluates_test_only_on_new_best_val(tmp_path):
    """train.eval_test=at_best: the same training, the test split evaluated only after epochs
    whose val accuracy beats every earlier one, and the same best record in the end."""
    runs = {}
    for mode in ("every_epoch", "at_best"):
        cfg = load_config(os.path.join(REPO, "configs/synthetic.yaml"),
                          [*TINY, "train.epochs=6", "train.lr=0.05", "run.tensorboard=false",
                           f"train.eval_test={mode}", f"run.out_dir={tmp_path}",
                           f"run.name={mode}"])
        summary = Trainer(cfg).fit()
        lines = (tmp_path / mode / "metrics.jsonl").read_text().splitlines()
        runs[mode] = (summary, [json.loads(ln) for ln in lines])
    (s_every, every), (s_best, at_best) = runs["every_epoch"], runs["at_best"]
    assert [r["val_acc"] for r in at_best] == [r["val_acc"] for r in every]
    new_best, top = [], -1.0
    for r in every:
        new_best.append(r["val_acc"] > top)
        top = max(top, r["val_acc"])
    assert 1 < sum(new_best) < len(every), new_best  # the check below sees both cases
    for r_best, r_every, is_new in zip(at_best, every, new_best):
        assert r_best["test_acc"] == (r_every["test_acc"] if is_new else None)
    for k in ("best_epoch", "val_acc", "test_acc", "test_si"):
        assert s_best[k] == s_every[k], k


@pytest.mark.parametrize("alpha", [0, -1])
def test_train_step_reads_the_device_only_every_log_every_steps(tmp_path, monkeypatch, alpha):
    """No host sync per step: one epoch of 45 steps reads tensors back (item, float, int,
    bool, tolist, cpu, numpy) only at the LOG_EVERY steps (global steps 0, 20, 40) and once
    at the end of the epoch: 4 reads, where per-step .item() calls would make 90+. The
    loader's once-per-epoch permutation (a CPU tensor by construction) is the only other."""
    from seltrain.metrics import NullSink
    from seltrain.trainer import LOG_EVERY

    steps = 45
    cfg = load_config(os.path.join(REPO, "configs/synthetic.yaml"),
                      ["data.val_size=0", f"data.synthetic.train_size={steps * 8}",
                       "data.synthetic.test_size=8", "data.synthetic.image_size=8",
                       "train.batch_size=8", "run.progress=false", "run.tensorboard=false",
                       f"selectivity.alpha={alpha}", f"run.out_dir={tmp_path}"])
    trainer = Trainer(cfg)
    reads = []
    for name in ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _original=original, _name=name, **kw):
            caller = sys._getframe(1).f_code.co_filename
            reads.append((_name, os.path.relpath(caller, REPO)))
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    stats, global_step = trainer.train_epoch(0, NullSink(), 0)
    monkeypatch.undo()
    assert global_step == steps and trainer.steps_per_epoch == steps
    assert len(reads) <= steps // LOG_EVERY + 3, reads
    step_reads = [r for r in reads if not r[1].startswith("seltrain/data/")]
    # every read is LossSums.read (the trainer's device-side sums)
    assert step_reads == [("tolist", "seltrain/metrics.py")] * 4, reads
    assert stats["train_loss"] > 0 and stats["train_batch_si"] > 0


def test_cudnn_benchmark_follows_determinism():
    """train.cudnn_benchmark: auto benchmarks only with CUDA and determinism off; true with
    deterministic is refused in one line; deterministic switches deterministic algorithms on
    and benchmarking off, and a later non-deterministic trainer switches them back."""
    from seltrain.errors import ConfigError
    from seltrain.rng import seed_everything

    saved = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    try:
        seed_everything(0, deterministic=True, cudnn_benchmark="auto")
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is False
        seed_everything(0, deterministic=False, cudnn_benchmark="auto")
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is torch.cuda.is_available()
        seed_everything(0, deterministic=False, cudnn_benchmark=True)
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.use_deterministic_algorithms(saved[1], warn_only=True)
    with pytest.raises(ConfigError, match="cudnn_benchmark=true picks conv kernels by timing"):
        load_config(None, ["train.cudnn_benchmark=true"])
    for path in ("imagenet_resnet50", "tinyimagenet_resnet18", "tinyimagenet_resnet50"):
        t = load_config(os.path.join(REPO, f"configs/{path}.yaml")).train
        assert (t.deterministic, t.cudnn_benchmark) == (False, "auto"), path


class ProbeState:
    """An epoch hook that reports the regularizer's probe as the epoch's other hooks left it."""
    record_key, tag = "probe_state", "debug/probe"

    def __call__(self, trainer, epoch):
        return {"attached": float(trainer.probe.attached),
                "layers_read": float(len(trainer.probe.acts)), "epoch": float(epoch)}


def test_epoch_hooks_reach_the_record_and_tensorboard(tmp_path):
    """run.track_orientation registers orientation's hook; any hook's values land in the
    epoch record under its record_key and in TensorBoard as <tag>/<name>. The orientation
    passes leave nothing in the regularizer's probe, and leave it attached."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from seltrain.analysis.orientation import OrientationTracking

    cfg = load_config(os.path.join(REPO, "configs/synthetic.yaml"),
                      [*TINY, "data.synthetic.train_size=256", "train.max_steps_per_epoch=2",
                       "selectivity.alpha=-1", "run.track_orientation=true",
                       f"run.out_dir={tmp_path}", "run.name=hooks"])
    trainer = Trainer(cfg)
    assert [type(h) for h in trainer.epoch_hooks] == [OrientationTracking]
    trainer.epoch_hooks.append(ProbeState())
    trainer.fit()
    records = [json.loads(ln) for ln in (tmp_path / "hooks" / "metrics.jsonl").open()]
    assert len(records) == 2
    for epoch, rec in enumerate(records):
        assert rec["probe_state"] == {"attached": 1.0, "layers_read": 0.0, "epoch": epoch}
        osi = rec["osi_per_layer"]
        assert len(osi) == 9 and all(0 <= v <= 1 for v in osi.values())
    acc = EventAccumulator(str(tmp_path / "hooks" / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("debug/probe/epoch")] == [0.0, 1.0]
    osi = acc.Scalars("orientation/osi_mean/layer1.0")
    assert [e.step for e in osi] == [0, 1]
    assert osi[1].value == pytest.approx(records[1]["osi_per_layer"]["layer1.0"], rel=1e-6)


def test_stage_mean_weighs_the_stem_as_one_stage_of_four(tmp_path):
    """selectivity.layer_mean=stage with layers=all on ResNet20: the stem is a stage of its
    own, so the reported mean SI weighs it 1/4 and each of the 9 blocks 1/12; the paper's
    recipes choose it."""
    cfg = load_config(os.path.join(REPO, "configs/synthetic.yaml"),
                      [*TINY, "train.epochs=1", "train.max_steps_per_epoch=1",
                       "data.num_workers=0", "selectivity.layers=all",
                       "selectivity.layer_mean=stage", "run.tensorboard=false",
                       f"run.out_dir={tmp_path}", "run.name=stage"])
    s = Trainer(cfg).fit()
    per = s["test_si_per_layer"]
    assert len(per) == 10
    expected = per["stem"] / 4 + sum(v for k, v in per.items() if k != "stem") / 12
    assert s["test_si"] == pytest.approx(expected, rel=1e-12)
    assert abs(s["test_si"] - sum(per.values()) / 10) > 1e-6
    for recipe in ("cifar10_resnet20", "tinyimagenet_resnet18", "tinyimagenet_resnet50"):
        assert load_config(os.path.join(REPO, f"configs/{recipe}.yaml")) \
            .selectivity.layer_mean == "stage", recipe
    assert load_config(None).selectivity.layer_mean == "block"


@pytest.mark.slow
def test_a_trained_model_loads_with_its_stem(tmp_path):
    """~4 s idle (a ResNet18 run). model.stem is in the recipe a checkpoint carries: a run trained with the nomaxpool stem
    (which has the same parameters as the imagenet one) loads without the max-pool."""
    from torch import nn

    from seltrain.checkpoint import load_trained_model

    cfg = load_config(os.path.join(REPO, "configs/synthetic.yaml"),
                      [*TINY, "train.epochs=1", "train.max_steps_per_epoch=1",
                       "data.num_workers=0", "model.arch=resnet18", "model.stem=nomaxpool",
                       "selectivity.eval_si=false", "run.tensorboard=false",
                       f"run.out_dir={tmp_path}", "run.name=stem"])
    Trainer(cfg).fit()
    model, _, loaded = load_trained_model(str(tmp_path / "stem"))
    assert loaded.model.stem == "nomaxpool" and isinstance(model.maxpool, nn.Identity)
    assert model.conv1.kernel_size == (7, 7)
