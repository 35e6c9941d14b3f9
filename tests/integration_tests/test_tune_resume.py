"""An ASHA search whose driver is SIGKILLed mid-search, then resumed with --resume: the finished
trial is not trained again, the trial ASHA stopped stays stopped, and the search completes.

One trial at a time on a real local Ray (2 CPUs): alpha 0 runs its 3 epochs; alpha 100 (the
regularizer swamps the cross-entropy) falls behind at a rung (1 or 2 epochs) and is stopped; the
driver and its local Ray (one process group) are killed once the third trial has started.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from helpers import REPO, run_cli
from test_tune import (_sets, epochs_logged, kill_search_once, read_csv, trial_dirs, tune_env,
                       write_recipe)

pytestmark = [pytest.mark.ray, pytest.mark.faults, pytest.mark.slow]


def _trials(exp):
    if not os.path.isdir(os.path.join(exp, "trials")):
        return {}
    return {n: r for n, r in trial_dirs(exp).items() if not n.startswith(".")}


def _state(run):
    p = os.path.join(run, "metrics.jsonl")
    with open(p, "rb") as f:
        return f.read(), os.path.getmtime(p), os.path.exists(os.path.join(run, "summary.json"))


def test_killed_asha_driver_resumes_without_redoing_or_reviving_trials(tmp_path):
    recipe = write_recipe(
        tmp_path, name="asha_resume",
        space={"selectivity.alpha": {"grid": [0.0, 100.0, -0.3]}},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
        max_concurrent_trials=1, max_failures=0)
    args = ["tune", "--search", recipe, "--num-cpus", "2", *_sets("train.epochs=3")]
    env = tune_env(tmp_path)
    exp = str(tmp_path / "exp" / "asha_resume")
    # The third trial folder appears only after the first two have ended (one at a time).
    kill_search_once(args, env, lambda: len(_trials(exp)) >= 3, timeout=400,
                     what="third trial")
    runs = _trials(exp)
    done = {n: r for n, r in runs.items() if os.path.exists(os.path.join(r, "summary.json"))}
    stopped = {n: r for n, r in runs.items() if n.startswith("alpha100_")}
    assert len(done) == 1 and next(iter(done)).startswith("alpha0_"), runs
    (stopped_run,) = stopped.values()
    stopped_epochs = epochs_logged(stopped_run)
    # Ended (the third trial runs) without finishing: ASHA cut it at a rung (1 or 2 epochs).
    assert stopped_epochs in ([0], [0, 1]) and stopped_run not in done.values(), stopped_epochs
    before = {n: _state(r) for n, r in {**done, **stopped}.items()}

    time.sleep(1.1)  # an mtime written by a redone epoch would differ
    r = run_cli(*args, "--resume", env=env, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name, run in {**done, **stopped}.items():
        assert _state(run) == before[name], f"{name} was trained again"
    assert epochs_logged(stopped_run) == stopped_epochs  # still stopped where ASHA cut it
    assert not os.path.exists(os.path.join(stopped_run, "summary.json"))
    rows = {x["trial"]: x for x in read_csv(os.path.join(exp, "results.csv"))}
    assert len(rows) == 3
    assert rows[next(iter(stopped))]["stopped_early"] == "True"
    assert rows[next(iter(done))]["complete"] == "True"
    (third,) = set(runs) - set(done) - set(stopped)
    assert epochs_logged(runs[third]) in ([0], [0, 1], [0, 1, 2])  # cut at a rung, or done
    summary = json.load(open(os.path.join(runs[next(iter(done))], "summary.json")))
    assert summary["epochs"] == 3


# A trial's Ray Train run, as `seltrain tune` starts it (run_trial's TorchTrainer over
# train_worker), on a local Ray with the search's own session setup.
_TRIAL_SCRIPT = r"""
import json, sys
import ray.train
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback
from seltrain.config import load_config
from seltrain.tuning.recipe import load_search
from seltrain.tuning.resources import scaling_config
from seltrain.tuning.session import start_ray
from seltrain.tuning.trials import train_worker

recipe_path, run_dir, storage, reports, *overrides = sys.argv[1:]


class Reports(UserCallback):
    # What TuneReportCallback forwards to Tune: every report of rank 0, one JSON line each.
    def after_report(self, run_context, metrics, checkpoint):
        with open(reports, "a") as f:
            f.write(json.dumps(metrics[0]) + "\n")


recipe, _ = load_search(recipe_path)
start_ray(recipe, address=None, num_cpus=2, num_gpus=0, verbose=False)
cfg = load_config("configs/synthetic.yaml", overrides)
TorchTrainer(
    train_worker,
    train_loop_config={"config": cfg, "run_dir": run_dir, "keys": [], "storage": None},
    scaling_config=scaling_config(recipe.resources),
    run_config=ray.train.RunConfig(name="t", storage_path=storage,
                                   callbacks=[Reports()])).fit()
"""


def test_a_trial_restarted_after_its_last_epoch_reports_its_summary(tmp_path):
    """A search stopped between a trial's last report and its summary.json (found in CI: the
    trial ran its 3 tiny epochs while the driver was being killed): on --resume the trial has
    nothing left to train. It must still report its numbers, or Tune fails the whole search
    ("Trial returned a result which did not include the specified metric(s) val_acc")."""
    from test_tune import TINY_BASE

    run_dir = tmp_path / "trial"
    overrides = [*TINY_BASE, "train.epochs=1", "run.tensorboard=false",
                 f"run.out_dir={tmp_path}", "run.name=trial"]
    # The trial's last epoch, checkpointed and reported, then the stop before summary.json.
    first = run_cli("train", "configs/synthetic.yaml", *overrides, env=tune_env(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    with open(run_dir / "summary.json") as f:
        expected = json.load(f)
    os.remove(run_dir / "summary.json")

    recipe = write_recipe(tmp_path)
    reports = tmp_path / "reports.jsonl"
    r = subprocess.run([sys.executable, "-c", _TRIAL_SCRIPT, recipe, str(run_dir),
                        str(tmp_path / "ray_train"), str(reports), *overrides], cwd=REPO,
                       env=tune_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(reports) as f:
        (metrics,) = [json.loads(line) for line in f]  # one report: the summary's
    assert metrics["already_done"] is True and metrics["epochs_done"] == 1
    assert metrics["val_acc"] == expected["val_acc"] and metrics["test_si"] == expected["test_si"]
    with open(run_dir / "summary.json") as f:  # written again, from the checkpoint
        assert json.load(f)["val_acc"] == expected["val_acc"]
