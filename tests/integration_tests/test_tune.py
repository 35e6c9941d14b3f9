"""`seltrain tune` on a real local Ray: ASHA, kill-and-resume, 2-worker trials, bad recipes.

Each search runs the real CLI in a subprocess (its own local Ray, 2 CPUs, one CPU per worker)
on a tiny synthetic recipe; the assertions read the experiment tree the CLI leaves behind.
Ray's start-up dominates (~15 s per CLI call, ~25 s per trial on 2 cores), so the searches
are as small as what they test allows.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, run_cli, subprocess_env

pytest.importorskip("ray")

SYNTH = os.path.join(REPO, "configs", "synthetic.yaml")
TINY_BASE = ["data.val_size=128", "data.synthetic.train_size=512",
             "data.synthetic.test_size=256", "data.synthetic.image_size=16",
             "train.eval_batch_size=256", "run.progress=false"]


def _sets(*extra):
    out = []
    for o in (*TINY_BASE, *extra):
        out += ["--set", o]
    return out


def write_recipe(tmp_path, name="search", **fields) -> str:
    recipe = {"base": SYNTH, "space": {"selectivity.alpha": {"grid": [0.0, -1.0]}},
              "seeds": [0], "resources": {"workers": 1, "cpus_per_worker": 1},
              "max_concurrent_trials": 2, "storage": str(tmp_path / "exp"), **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def tune_env(tmp_path):
    return subprocess_env(SELTRAIN_RAY_TMP=f"/tmp/seltrain_ray_test_{os.getpid()}",
                          RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def trial_dirs(exp):
    root = os.path.join(exp, "trials")
    return {d: os.path.join(root, d) for d in sorted(os.listdir(root))}


def epochs_logged(run):
    p = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [json.loads(ln)["epoch"] for ln in f if ln.strip()]


# ----------------------------------------------------------------------------- bad recipes

@pytest.mark.parametrize("fields, message", [
    ({"schedular": {"type": "asha"}}, "unknown key 'schedular'"),
    ({"space": {}}, "space is empty"),
    ({"space": {"selectivity.alpha": {"grid": []}}}, "space.selectivity.alpha has no values"),
    ({"space": {"selectivity.alhpa": [1.0]}}, "unknown key 'selectivity.alhpa'"),
    ({"resources": {"workers": 3, "cpus_per_worker": 1}}, "= 3 CPU, 0 GPU but this machine"),
    ({"resources": {"workers": 1, "gpus_per_worker": 1}}, "1 GPU but this machine"),
    ({"metric": "test_acc", "overrides": ["train.eval_test=at_best"]},
     "metric test_acc needs the test split every epoch"),
])
def test_bad_search_recipe_is_one_line_exit_2(tmp_path, fields, message):
    recipe = write_recipe(tmp_path, **fields)
    r = run_cli("tune", "--search", recipe, "--num-cpus", "2", timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seltrain: error: "), r.stderr
    assert message in lines[0], lines[0]
    if "schedular" in message:
        assert "did you mean 'scheduler'" in lines[0]
    if "alhpa" in message:
        assert "did you mean 'selectivity.alpha'" in lines[0]


def test_dry_run_finds_recipe_by_name_and_applies_set():
    r = run_cli("tune", "--search", "alpha", "--dry-run", "--set", "train.epochs=30")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "75 trials x 30 epochs = 2250 trial-epochs" in out
    assert "1 worker(s) x 4 CPU, 1 GPU" in out
    # Both signs of alpha, log-spaced, with 0, from -100 to 100.
    for a in ("-100.0", "-0.1", " 0.0", "0.316", "100.0"):
        assert a in out, a
    r = run_cli("tune", "--search", "alpah", "--dry-run")
    assert r.returncode == 2 and "did you mean 'alpha'" in r.stderr


# ----------------------------------------------------------------------------- real searches

def test_asha_search_stops_weak_trials_and_reports(tmp_path):
    """4 alphas, 3 epochs, ASHA at 1 epoch: the huge-alpha trials fall behind and are cut."""
    recipe = write_recipe(
        tmp_path, name="asha",
        space={"selectivity.alpha": {"grid": [0.0, -0.3, 30.0, 100.0]}},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    r = run_cli("tune", "--search", recipe, "--num-cpus", "2", *_sets("train.epochs=3"),
                env=tune_env(tmp_path), timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = str(tmp_path / "exp" / "asha")
    rows = read_csv(os.path.join(exp, "results.csv"))
    assert sorted(float(x["alpha"]) for x in rows) == [-0.3, 0.0, 30.0, 100.0]
    stopped = [x for x in rows if x["stopped_early"] == "True"]
    assert 1 <= len(stopped) <= 3, rows
    for x in stopped:
        assert int(x["epochs_run"]) < 3
    assert any(x["complete"] == "True" and int(x["epochs_run"]) == 3 for x in rows)
    for x in rows:
        assert 0.0 <= float(x["test_acc"]) <= 1.0 and float(x["test_si"]) >= 0.0
    for png in ("test_acc_vs_alpha.png", "si_vs_alpha.png", "acc_vs_si.png"):
        path = os.path.join(exp, "plots", png)
        assert os.path.getsize(path) > 5000, path
    # One TensorBoard tree: every trial's events (with hparams), and the figures as images.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name, run in trial_dirs(exp).items():
        ea = EventAccumulator(os.path.join(run, "tb"), size_guidance={"tensors": 0})
        ea.Reload()
        assert "test/acc" in ea.Tags()["scalars"], name
    ea = EventAccumulator(os.path.join(exp, "tb_sweep"), size_guidance={"images": 0})
    ea.Reload()
    assert set(ea.Tags()["images"]) == {"sweep/test_acc_vs_alpha", "sweep/si_vs_alpha",
                                        "sweep/acc_vs_si"}
    # `seltrain report` on the folder prints the same table at any time.
    rep = run_cli("report", exp)
    assert rep.returncode == 0, rep.stderr
    assert "stopped early" in rep.stdout and "per alpha" in rep.stdout


def test_killed_driver_resumes_without_redoing_finished_trials_with_2_worker_trials(tmp_path):
    """Two trials of 2 gloo workers each, one at a time; SIGKILL the driver (and its local Ray)
    once the first has finished, then --resume: the first is kept, the second completes."""
    recipe = write_recipe(tmp_path, name="resume",
                          resources={"workers": 2, "cpus_per_worker": 1},
                          max_concurrent_trials=1, max_failures=0)
    args = ["tune", "--search", recipe, "--num-cpus", "2", *_sets("train.epochs=3")]
    env = tune_env(tmp_path)
    exp = str(tmp_path / "exp" / "resume")
    proc = subprocess.Popen([sys.executable, "-m", "seltrain", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline and first is None:
            time.sleep(1)
            assert proc.poll() is None, "the search ended before it could be interrupted"
            if os.path.isdir(os.path.join(exp, "trials")):
                for name, run in trial_dirs(exp).items():
                    if os.path.exists(os.path.join(run, "summary.json")):
                        first = name
        assert first is not None, "no trial finished in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    done_run = trial_dirs(exp)[first]
    with open(os.path.join(done_run, "metrics.jsonl")) as f:
        before = f.read()
    mtime = os.path.getmtime(os.path.join(done_run, "metrics.jsonl"))
    summary = json.load(open(os.path.join(done_run, "summary.json")))
    assert summary["world_size"] == 2  # a real 2-rank gloo run

    time.sleep(2)
    r = run_cli(*args, "--resume", env=env, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = trial_dirs(exp)
    assert len(runs) == 2, runs
    # The finished trial was not trained again: same epochs, same file, untouched.
    with open(os.path.join(done_run, "metrics.jsonl")) as f:
        assert f.read() == before
    assert os.path.getmtime(os.path.join(done_run, "metrics.jsonl")) == mtime
    for name, run in runs.items():
        assert epochs_logged(run) == [0, 1, 2], name  # no epoch run twice, none missing
        s = json.load(open(os.path.join(run, "summary.json")))
        assert s["world_size"] == 2 and s["epochs"] == 3
    rows = read_csv(os.path.join(exp, "results.csv"))
    assert len(rows) == 2 and all(x["complete"] == "True" for x in rows)


def test_resume_needs_an_experiment_and_refuses_to_overwrite(tmp_path):
    recipe = write_recipe(tmp_path, name="fresh")
    r = run_cli("tune", "--search", recipe, "--resume", "--num-cpus", "2", timeout=120)
    assert r.returncode == 2 and "nothing to resume" in r.stderr, r.stderr
