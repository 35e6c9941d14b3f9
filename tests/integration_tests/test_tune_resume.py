"""An ASHA search whose driver is SIGKILLed mid-search, then resumed with --resume: the finished
trial is not trained again, the trial ASHA stopped stays stopped, and the search completes.

One trial at a time on a real local Ray (2 CPUs): alpha 0 runs its 3 epochs; alpha 100 (the
regularizer swamps the cross-entropy) falls behind at a rung (1 or 2 epochs) and is stopped; the
driver and its local Ray (one process group) are killed once the third trial has started.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, run_cli
from test_tune import _sets, epochs_logged, read_csv, trial_dirs, tune_env, write_recipe

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
    proc = subprocess.Popen([sys.executable, "-m", "seltrain", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 400
    try:
        # The third trial folder appears only after the first two have ended (one at a time).
        while len(_trials(exp)) < 3:
            assert proc.poll() is None, "the search ended before it could be interrupted"
            assert time.time() < deadline, "the third trial never started"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
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
