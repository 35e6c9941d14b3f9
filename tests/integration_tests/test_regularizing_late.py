"""selectivity.alpha_schedule end to end: the alpha each epoch trained with, in metrics.jsonl
and TensorBoard, and a run interrupted mid-schedule and resumed equal, bit for bit, to one
that ran through."""
import json
import os

import pytest
import torch

from helpers import REPO
from seltrain.config import load_config
from seltrain.trainer import Trainer

# 4 steps of 32 an epoch at 8 px: an epoch takes about a second on 2 cores.
TINIEST = ["data.dataset=synthetic", "data.synthetic.train_size=160", "data.val_size=32",
           "data.synthetic.test_size=64", "data.synthetic.image_size=8", "data.num_workers=0",
           "train.batch_size=32", "train.epochs=4", "train.lr=0.05", "run.progress=false"]
# Alpha 0 for epochs 0-1, then -2 (Ranadive et al. 2023's "regularized from epoch 2 onward").
LATE = ["selectivity.alpha=-2", "selectivity.alpha_schedule.kind=step",
        "selectivity.alpha_schedule.start_epoch=2"]


class Stop(Exception):
    pass


def _cfg(out, name, *extra):
    return load_config(os.path.join(REPO, "configs/synthetic.yaml"),
                       [*TINIEST, *LATE, f"run.out_dir={out}", f"run.name={name}", *extra])


def _records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_run_resumed_mid_schedule_equals_one_that_ran_through(tmp_path):
    """~8 s: two runs of 4 tiny epochs. The interrupted run stops inside epoch 2, the first
    regularized epoch (after epoch 1's checkpoint, the last at alpha 0), so the resumed run
    must pick the schedule up at alpha -2, not start it over at 0."""
    ref = Trainer(_cfg(tmp_path, "ref")).fit()
    trainer = Trainer(_cfg(tmp_path, "cut"))
    steps = trainer.steps_per_epoch

    def stop(global_step):
        if global_step == 2 * steps + 1:  # the second step of epoch 2
            raise Stop

    trainer.step_hooks.append(stop)
    with pytest.raises(Stop):
        trainer.fit()
    cut = tmp_path / "cut"
    assert [r["epoch"] for r in _records(cut)] == [0, 1]
    resumed = Trainer(_cfg(tmp_path, "cut"), resume=True).fit()

    a = torch.load(tmp_path / "ref/checkpoints/last.pt", weights_only=True)
    b = torch.load(cut / "checkpoints/last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ra, rb = _records(tmp_path / "ref"), _records(cut)
    assert [r["alpha"] for r in ra] == [r["alpha"] for r in rb] == [0.0, 0.0, -2.0, -2.0]
    for x, y in zip(ra, rb):
        for key in ("train_loss", "train_ce", "val_acc", "test_acc", "test_si"):
            assert x[key] == y[key], (key, x[key], y[key])
    # At alpha 0 the loss is the cross-entropy; regularized, it is CE + 2 * mean batch SI.
    assert ra[0]["train_loss"] == ra[0]["train_ce"]
    assert ra[2]["train_loss"] > ra[2]["train_ce"]
    assert ref["alpha"] == resumed["alpha"] == -2.0
    assert ref["alpha_schedule"] == "0 until epoch 2, then -2"


def test_alpha_per_epoch_in_tensorboard(tmp_path):
    """A ramp from 0 at epoch 0 to -2 at epoch 2 (3 epochs): train/alpha holds 0, -1, -2,
    one point per epoch at the step each epoch starts."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(tmp_path, "ramp", "train.epochs=3", "selectivity.alpha_schedule.kind=ramp",
               "selectivity.alpha_schedule.start_epoch=0",
               "selectivity.alpha_schedule.end_epoch=2", "train.max_steps_per_epoch=2",
               "selectivity.eval_si=false")
    Trainer(cfg).fit()
    acc = EventAccumulator(str(tmp_path / "ramp/tb"), size_guidance={"scalars": 0})
    acc.Reload()
    points = [(e.step, e.value) for e in acc.Scalars("train/alpha")]
    assert points == [(0, 0.0), (2, -1.0), (4, -2.0)]
    assert [r["alpha"] for r in _records(tmp_path / "ramp")] == [0.0, -1.0, -2.0]


# Regularized in epochs 1-2 only (Ranadive et al. 2023's "regularizing in a window"), and the
# checkpoints of epochs 0-2 kept for analyses early in training.
WINDOW = ["selectivity.alpha_schedule.kind=window", "selectivity.alpha_schedule.start_epoch=1",
          "selectivity.alpha_schedule.end_epoch=3", "run.keep_epochs=[0,1,2]"]


@pytest.mark.slow
def test_a_window_resumed_mid_window_equals_one_that_ran_through(tmp_path):
    """~4 s: two runs of 4 tiny epochs, alpha 0, -2, -2, 0. The interrupted run stops inside
    epoch 2 (the window's second epoch); epoch 1's kept copy is then removed, as a crash
    between writing last.pt and copying it would leave it, and the resume restores it. Each
    kept epoch_NNN.pt holds the weights of that epoch of the run that went through."""
    ref = Trainer(_cfg(tmp_path, "ref", *WINDOW)).fit()
    trainer = Trainer(_cfg(tmp_path, "cut", *WINDOW))
    steps = trainer.steps_per_epoch

    def stop(global_step):
        if global_step == 2 * steps + 1:  # the second step of epoch 2
            raise Stop

    trainer.step_hooks.append(stop)
    with pytest.raises(Stop):
        trainer.fit()
    cut = tmp_path / "cut"
    assert sorted(os.listdir(cut / "checkpoints")) == ["best.pt", "epoch_000.pt",
                                                       "epoch_001.pt", "last.pt"]
    (cut / "checkpoints/epoch_001.pt").unlink()
    Trainer(_cfg(tmp_path, "cut", *WINDOW), resume=True).fit()

    ra, rb = _records(tmp_path / "ref"), _records(cut)
    assert [r["alpha"] for r in ra] == [r["alpha"] for r in rb] == [0.0, -2.0, -2.0, 0.0]
    # Unregularized epochs: the loss is the cross-entropy; in the window it is CE + 2 * SI.
    assert [r["train_loss"] == r["train_ce"] for r in ra] == [True, False, False, True]
    for x, y in zip(ra, rb):
        for key in ("train_loss", "val_acc", "test_acc", "test_si"):
            assert x[key] == y[key], (key, x[key], y[key])
    assert ref["alpha_schedule"] == "-2 in epochs 1-2, 0 outside"
    for run in (tmp_path / "ref", cut):
        assert sorted(f for f in os.listdir(run / "checkpoints") if f.startswith("epoch_")) \
            == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt"]
    for e in range(3):
        a = torch.load(tmp_path / f"ref/checkpoints/epoch_{e:03d}.pt", weights_only=True)
        b = torch.load(cut / f"checkpoints/epoch_{e:03d}.pt", weights_only=True)
        assert a["epoch"] == b["epoch"] == e
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (e, k)
    last = torch.load(cut / "checkpoints/last.pt", weights_only=True)
    assert last["epoch"] == 3 and not torch.equal(last["model"]["fc.weight"],
                                                  b["model"]["fc.weight"])


@pytest.mark.slow
def test_ablation_of_the_kept_epochs(tmp_path):
    """~20 s: `seltrain analyze ablation RUN --checkpoint kept --cumulative` ablates the
    network as it was after epoch 0 and after epoch 1 (run.keep_epochs=[0,1]; the best epoch
    is another checkpoint). Each epoch's intact accuracy is its test_acc in metrics.jsonl;
    its results go to <run>/analysis/epoch_00E/ablation; the curves start at that accuracy
    and meet with every unit zeroed; <run>/analysis/ablation_over_epochs/ablation_over_epochs.csv
    holds, per epoch, the accuracies with half the units zeroed (the curves' fraction 0.5)."""
    import csv
    import json as _json

    from seltrain.analysis.ablation import AblationOptions
    from seltrain.analysis.commands import run_analysis

    cfg = _cfg(tmp_path, "early", "train.epochs=3", "selectivity.alpha=0",
               "selectivity.alpha_schedule.kind=constant",
               "selectivity.alpha_schedule.start_epoch=0", "run.keep_epochs=[0,1]")
    Trainer(cfg).fit()
    run = tmp_path / "early"
    opts = AblationOptions(checkpoint="kept", layers=("layer3.2",), cumulative=True,
                           n_random=2, device="cpu")
    summaries = run_analysis("ablation", str(run), opts, stream=open(os.devnull, "w"))
    assert [s["out_dir"] for s in summaries] == [str(run / f"analysis/epoch_00{e}/ablation")
                                                 for e in (0, 1)]
    assert not (run / "analysis/ablation").exists()
    with open(run / "analysis/ablation_over_epochs/ablation_over_epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["layer"]) for r in rows] == [("0", "layer3.2"), ("1", "layer3.2")]
    records = _records(run)
    for e, row in zip((0, 1), rows):
        out = run / f"analysis/epoch_00{e}/ablation"
        res = _json.loads((out / "ablation_layer3.2.json").read_text())
        marker = _json.loads((out / ".seltrain-analysis.json").read_text())
        assert marker["checkpoint"] == str(run / f"checkpoints/epoch_00{e}.pt")
        acc = records[e]["test_acc"]
        assert res["single_unit"]["baseline_acc"] == pytest.approx(acc, abs=1e-12)
        cum = res["cumulative"]
        assert cum["si_high_first"][0] == cum["random"][0][0] == pytest.approx(acc)
        assert cum["si_high_first"][-1] == cum["si_low_first"][-1] == cum["random"][1][-1]
        # 64 units, fraction 0.5: the 32 of highest SI, of lowest SI, or 32 at random zeroed
        assert cum["fractions"][5] == 0.5 and cum["n_ablated"][5] == 32
        assert float(row["intact_acc"]) == pytest.approx(acc, abs=1e-12)
        assert float(row["si_high_half_acc"]) == pytest.approx(cum["si_high_first"][5])
        assert float(row["si_low_half_acc"]) == pytest.approx(cum["si_low_first"][5])
        assert float(row["random_half_acc"]) == pytest.approx(
            (cum["random"][0][5] + cum["random"][1][5]) / 2)
        assert float(row["mean_unit_drop"]) == pytest.approx(
            sum(res["single_unit"]["overall_drop"]) / 64)
    assert records[0]["test_si"] != records[1]["test_si"]  # two different networks
    assert (run / "analysis/ablation_over_epochs/ablation_over_epochs.png").stat().st_size > 1000
