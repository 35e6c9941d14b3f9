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
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from helpers import REPO, free_port, run_cli, subprocess_env

pytest.importorskip("ray")
pytestmark = pytest.mark.ray

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


def kill_search_once(args, env, ready, timeout: float, what: str):
    """Start ``seltrain *args`` in its own session, wait until ``ready()`` is true, then
    SIGKILL the driver and the local Ray it started (one process group) and reap it; returns
    that true value of ``ready()``."""
    proc = subprocess.Popen([sys.executable, "-m", "seltrain", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not (seen := ready()):
            assert proc.poll() is None, "the search ended before it could be interrupted"
            assert time.time() < deadline, f"no {what} within {timeout:.0f} s"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return seen


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def trial_dirs(exp):
    root = os.path.join(exp, "trials")
    return {d: os.path.join(root, d) for d in sorted(os.listdir(root))
            if os.path.isdir(os.path.join(root, d))}


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
    # Two NCCL ranks of one trial cannot share a GPU; Ray cannot hand out 1.5 GPUs.
    ({"resources": {"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0.5}},
     "resources.gpus_per_worker=0.5 with workers=2 puts several NCCL ranks"),
    ({"resources": {"workers": 1, "gpus_per_worker": 1.5}},
     "resources.gpus_per_worker=1.5: give a fraction below 1"),
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


def test_fractional_gpus_for_one_worker_trials(tmp_path):
    """0.25 GPU per one-worker trial: four trials share a GPU (planned here; no GPU to run)."""
    from seltrain.tuning import load_search
    from seltrain.tuning import scaling_config as _scaling_config

    recipe = write_recipe(tmp_path, resources={"workers": 1, "cpus_per_worker": 1,
                                               "gpus_per_worker": 0.25},
                          max_concurrent_trials=4)
    r = run_cli("tune", "--search", recipe, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "1 worker(s) x 1 CPU, 0.25 GPU" in r.stdout
    assert "4 concurrent = 4 CPU, 1 GPU" in r.stdout
    rec, _ = load_search(recipe)
    sc = _scaling_config({"workers": 1, "cpus_per_worker": 1.0, "gpus_per_worker": 0.25})
    assert sc.use_gpu and sc.num_workers == 1
    assert sc.resources_per_worker == {"CPU": 1.0, "GPU": 0.25}
    assert rec.resources.gpus_per_worker == 0.25


def _no_cluster_here(*cmd):
    """``cmd`` in a private PID and mount namespace with an empty /tmp/ray: Ray's `auto`
    finds clusters by scanning processes and /tmp/ray/ray_current_cluster, and other jobs on
    this machine run Ray."""
    inner = " ".join(f"'{c}'" for c in cmd)
    return ["unshare", "-p", "-f", "--mount-proc", "-m", "sh", "-c",
            f"mkdir -p /tmp/ray && mount -t tmpfs tmpfs /tmp/ray && exec {inner}"]


@pytest.mark.parametrize("address", ["auto", "dead"])
def test_address_without_a_cluster_is_one_line(tmp_path, address):
    recipe = write_recipe(tmp_path)
    env = tune_env(tmp_path)
    env.pop("RAY_ADDRESS", None)
    if address == "auto":
        if os.geteuid() != 0 or not shutil.which("unshare"):
            pytest.skip("needs root and unshare(1) to hide this machine's other Ray clusters")
        cmd = _no_cluster_here(sys.executable, "-m", "seltrain", "tune", "--search", recipe,
                               "--address", "auto")
    else:  # a host:port where nothing listens: before, ray.init retried for minutes
        cmd = [sys.executable, "-m", "seltrain", "tune", "--search", recipe, "--address",
               f"127.0.0.1:{free_port()}"]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seltrain: error: "), r.stderr
    assert ("Could not find any running Ray instance" if address == "auto" else
            "no Ray cluster answers at --address 127.0.0.1:") in lines[0], lines[0]
    assert "ray start --head" in lines[0]
    assert time.time() - t0 < 60
    assert not os.path.exists(tmp_path / "exp" / "search" / "trials"), "nothing written"


def test_dry_run_finds_recipe_by_name_and_applies_set():
    r = run_cli("tune", "--search", "alpha", "--dry-run", "--set", "train.epochs=30")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "75 trials x 30 epochs = 2250 trial-epochs" in out
    assert "1 worker(s) x 2 CPU, 0.25 GPU" in out and "at most 32 concurrent = 64 CPU, 8 GPU" in out
    # Both signs of alpha, log-spaced, with 0, from -100 to 100.
    for a in ("-100.0", "-0.1", " 0.0", "0.316", "100.0"):
        assert a in out, a
    r = run_cli("tune", "--search", "alpah", "--dry-run")
    assert r.returncode == 2 and "did you mean 'alpha'" in r.stderr


# ----------------------------------------------------------------------------- real searches

@pytest.mark.slow
def test_asha_search_stops_weak_trials_and_reports(tmp_path):
    """4 alphas, 3 epochs, ASHA at 1 epoch: the huge-alpha trials fall behind and are cut.

    Also the console (what `make demo` shows): short, Ray's internals silent, each epoch once
    under its trial's folder name; and TensorBoard's HParams for the trials ASHA stopped."""
    recipe = write_recipe(
        tmp_path, name="asha",
        space={"selectivity.alpha": {"grid": [0.0, -0.3, 30.0, 100.0]}},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    r = run_cli("tune", "--search", recipe, "--num-cpus", "2", *_sets("train.epochs=3"),
                env=tune_env(tmp_path), timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = str(tmp_path / "exp" / "asha")
    check_console(r.stdout + r.stderr, exp, epochs=3)
    check_hparams_of_stopped_trials(exp)
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
    # The trials record dead units and per-epoch test SI, so the sweep draws those too.
    assert set(ea.Tags()["images"]) == {"sweep/test_acc_vs_alpha", "sweep/si_vs_alpha",
                                        "sweep/acc_vs_si", "sweep/dead_vs_alpha",
                                        "sweep/si_over_training"}
    # `seltrain report` on the folder prints the same table at any time.
    rep = run_cli("report", exp)
    assert rep.returncode == 0, rep.stderr
    assert "stopped early" in rep.stdout and "best alpha by" in rep.stdout
    assert "one seed" in rep.stdout and "+- " not in rep.stdout  # one seed: no spread


EPOCH_LINE = re.compile(r"^(\S+)  epoch (\d+)/(\d+)  loss ")


def check_console(console: str, exp: str, epochs: int) -> None:
    """The console of a real search: bounded, none of Ray's internals, every trial by its
    folder name, every reported epoch exactly once, the TensorBoard command at the end."""
    lines = console.splitlines()
    assert len(lines) <= 60, console  # 4 trials x 3 epochs, starts, ends, table, report
    for noise in ("Traceback", "Failed to query", "(raylet)", "TrainingReport", "Trial status",
                  "PreemptionWatcher", "core_worker", "WARNING", "_trial_"):
        assert noise not in console, noise
    runs = trial_dirs(exp)
    printed: dict = {}
    for ln in lines:
        m = EPOCH_LINE.match(ln)
        if m:
            assert int(m.group(3)) == epochs
            printed.setdefault(m.group(1), []).append(int(m.group(2)))
    assert set(printed) == set(runs), (printed, runs)  # names are the folder names
    stopped = 0
    for name, run in runs.items():
        assert f"{name}  started" in console, name
        on_disk = [e + 1 for e in epochs_logged(run)]
        # Once each, in order, from 1; a trial stopped by ASHA may log more epochs to its
        # folder than Tune saw, even finish, before its workers are gone (Ray Train frees them
        # a few seconds after the stop; these epochs take about as long).
        n = len(printed[name])
        assert printed[name] == list(range(1, n + 1)), (name, printed[name])
        assert printed[name] == on_disk[:n], (name, on_disk)
        if f"{name}  stopped by ASHA after epoch {n}:" in console:
            assert n < epochs
            stopped += 1
        else:
            assert n == epochs and f"{name}  finished: best val_acc" in console, name
    assert 1 <= stopped <= 3
    assert f"tensorboard --logdir {exp}" in lines[-1]


def check_hparams_of_stopped_trials(exp: str) -> None:
    """Every trial is in the HParams tab from its first epoch, with the searched keys and its
    last metrics; only finished trials carry the session's end."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    stopped = 0
    for name, run in trial_dirs(exp).items():
        ea = EventAccumulator(os.path.join(run, "tb"), size_guidance={"scalars": 0})
        ea.Reload()
        content = ea.PluginTagToContent("hparams")
        start = metadata.parse_session_start_info_plugin_data(
            content["_hparams_/session_start_info"])
        hp = {k: v.number_value if v.HasField("number_value") else v.string_value
              for k, v in start.hparams.items()}
        assert {"selectivity.alpha", "train.seed", "model.arch", "train.lr"} <= set(hp), hp
        experiment = metadata.parse_experiment_plugin_data(content["_hparams_/experiment"])
        # The run's own four, then every analysis' headline tags (filled once analysed).
        from seltrain.analysis import tb_views

        assert [m.name.tag for m in experiment.metric_infos] == [
            "hparam/val_acc", "hparam/test_acc", "hparam/test_si", "hparam/epochs",
            *tb_views.headline_tags()]
        assert len(experiment.metric_infos) == 24
        recs = [json.loads(ln) for ln in open(os.path.join(run, "metrics.jsonl"))]
        best = max(recs, key=lambda x: x["val_acc"])
        last = {t: ea.Scalars(t)[-1].value for t in ("hparam/val_acc", "hparam/test_si",
                                                      "hparam/epochs")}
        assert last["hparam/epochs"] == len(recs), name
        assert last["hparam/val_acc"] == pytest.approx(best["val_acc"], abs=1e-6), name
        assert last["hparam/test_si"] == pytest.approx(best["test_si"], abs=1e-6), name
        finished = os.path.exists(os.path.join(run, "summary.json"))
        assert ("_hparams_/session_end_info" in content) == finished, name
        stopped += not finished
    assert stopped >= 1  # at least one listed with no end: the ASHA cut came mid-run


@pytest.mark.slow
def test_killed_driver_resumes_without_redoing_finished_trials_with_2_worker_trials(tmp_path):
    """Two trials of 2 gloo workers each, one at a time; SIGKILL the driver (and its local Ray)
    once the first has finished, then --resume: the first is kept, the second completes."""
    recipe = write_recipe(tmp_path, name="resume",
                          resources={"workers": 2, "cpus_per_worker": 1},
                          max_concurrent_trials=1, max_failures=0)
    args = ["tune", "--search", recipe, "--num-cpus", "2", *_sets("train.epochs=3")]
    env = tune_env(tmp_path)
    exp = str(tmp_path / "exp" / "resume")

    def finished() -> list[str]:
        if not os.path.isdir(os.path.join(exp, "trials")):
            return []
        return [name for name, run in trial_dirs(exp).items()
                if os.path.exists(os.path.join(run, "summary.json"))]

    first = kill_search_once(args, env, finished, timeout=300, what="finished trial")[-1]
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
