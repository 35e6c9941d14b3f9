"""`seltrain tune --address` on Ray's fake multi-node autoscaler (tests/fake_cluster.py).

One cluster for the module: a head with 0 CPUs and at most two 1-CPU worker nodes, which Ray's
autoscaler starts when trials wait for CPUs and removes 12 s after they go idle. In order:
- a search of 2 concurrent trials grows the cluster from 0 to 2 workers, and it shrinks back;
- a worker node SIGKILLed mid-trial (a spot reclaim): Ray Train restarts the trial's worker on
  a new node from the last checkpoint; no epoch is trained twice, and the final metrics equal
  an uninterrupted `seltrain train` of the same recipe, bitwise;
- bad input on a cluster: a worker larger than every node type, and trial folders the worker
  nodes cannot see (the driver in its own mount namespace), each one line and exit 2.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import yaml

from helpers import REPO, TINY, run_cli

pytest.importorskip("ray")
pytest.importorskip("psutil")

from fake_cluster import FakeCluster, cluster_env  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.slow]

SYNTH = os.path.join(REPO, "configs", "synthetic.yaml")
TINY_SETS = [o for o in TINY if not o.startswith("train.epochs=")]
# Wall-clock and throughput differ between any two runs; everything else must match exactly.
TIMING_KEYS = {"images_per_s", "train_time_s", "run_dir"}


@pytest.fixture(scope="module")
def cluster():
    with FakeCluster(max_workers=2, idle_timeout_minutes=0.2) as fc:
        yield fc


def write_recipe(tmp_path, name, epochs, alphas=(0.0,), **fields) -> str:
    recipe = {"base": SYNTH, "space": {"selectivity.alpha": {"grid": list(alphas)}},
              "seeds": [0], "resources": {"workers": 1, "cpus_per_worker": 1},
              "max_concurrent_trials": 2, "storage": str(tmp_path / "exp"),
              "overrides": [*TINY_SETS, f"train.epochs={epochs}"], **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def tune_args(cluster, recipe):
    return [sys.executable, "-m", "seltrain", "tune", "--search", recipe,
            "--address", cluster.address]


def records(run_dir):
    p = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [json.loads(ln) for ln in f if ln.strip() and ln.endswith("\n")]


def trial_dirs(exp):
    root = os.path.join(exp, "trials")
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, d) for d in sorted(os.listdir(root))
            if os.path.isdir(os.path.join(root, d))]


def test_search_grows_the_cluster_to_two_workers_and_it_shrinks_back(cluster, tmp_path):
    cluster.wait_workers(lambda n: n == 0, timeout=120)
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            try:
                seen.append(len(cluster.workers()))
            except Exception:  # noqa: BLE001 - a State API hiccup: next poll
                pass
            stop.wait(1.0)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    recipe = write_recipe(tmp_path, "grow", epochs=2, alphas=(0.0, -1.0))
    r = subprocess.run(tune_args(cluster, recipe), cwd=REPO, env=cluster_env(),
                       capture_output=True, text=True, timeout=600)
    stop.set()
    t.join()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert seen[0] == 0 and max(seen) == 2, seen
    # Both trials ran to the end, on the two workers the autoscaler added.
    exp = str(tmp_path / "exp" / "grow")
    done = [d for d in trial_dirs(exp) if os.path.exists(os.path.join(d, "summary.json"))]
    assert len(done) == 2 and all([r["epoch"] for r in records(d)] == [0, 1] for d in done)
    assert "on the Ray cluster at" in r.stdout
    # Idle for idle_timeout_minutes (12 s): both worker nodes go.
    shrink = cluster.wait_workers(lambda n: n == 0, timeout=120)
    assert shrink < 120


def test_node_killed_mid_trial_resumes_on_another_node_and_matches_uninterrupted(cluster,
                                                                                 tmp_path):
    epochs = 4
    # The uninterrupted reference: the same recipe under `seltrain train`, alongside.
    ref = subprocess.Popen(
        [sys.executable, "-m", "seltrain", "train", SYNTH, *TINY_SETS, f"train.epochs={epochs}",
         "selectivity.alpha=-1.0", "train.seed=0", f"run.out_dir={tmp_path}", "run.name=ref"],
        cwd=REPO, env=cluster_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    recipe = write_recipe(tmp_path, "loss", epochs=epochs, alphas=(-1.0,), max_failures=2)
    exp = str(tmp_path / "exp" / "loss")
    log = open(tmp_path / "driver.log", "w+")
    driver = subprocess.Popen(tune_args(cluster, recipe), cwd=REPO, env=cluster_env(),
                              stdout=log, stderr=subprocess.STDOUT, text=True)
    killed, at_kill = None, None
    deadline = time.time() + 400
    try:
        while killed is None and time.time() < deadline and driver.poll() is None:
            time.sleep(0.5)
            runs = trial_dirs(exp)
            n = len(records(runs[0])) if runs else 0
            if 1 <= n < epochs:  # epoch 1 is checkpointed; epoch 2 is in progress
                nodes = cluster.actor_nodes("RayTrainWorker")
                if nodes:
                    at_kill = n
                    cluster.kill_node(nodes[0])
                    killed = nodes[0]
        assert killed is not None, "the trial never reached its second epoch in time"
        # Ray Train starts the worker again, on a node that is not the dead one.
        moved = None
        while moved is None and time.time() < deadline and driver.poll() is None:
            moved = next((n for n in cluster.actor_nodes("RayTrainWorker") if n != killed),
                         None)
            time.sleep(1)
        driver.wait(timeout=max(1, deadline - time.time()))
    finally:
        if driver.poll() is None:
            driver.kill()
        ref.wait(timeout=300)
    log.seek(0)
    out = log.read()
    assert driver.returncode == 0, out[-4000:]
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert moved is not None and moved != killed, out[-3000:]
    run = trial_dirs(exp)[0]
    got = records(run)
    # No completed epoch trained twice, none missing: the file runs on from the checkpoint.
    assert [r["epoch"] for r in got] == list(range(epochs))
    # The console says where it continued: after the last checkpointed epoch before the kill
    # (or the one that finished while the kill was being sent).
    line = next(ln for ln in out.splitlines() if "continued from its checkpoint after epoch" in ln)
    resumed_after = int(line.rsplit(" ", 1)[-1])
    assert at_kill <= resumed_after <= at_kill + 1, (at_kill, line)
    # Bitwise: the resumed trial ends exactly where the uninterrupted run does.
    want = records(str(tmp_path / "ref"))
    assert [r["epoch"] for r in want] == list(range(epochs))
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING_KEYS}  # noqa: E731
    assert strip(got[-1]) == strip(want[-1])
    with open(os.path.join(run, "summary.json")) as f:
        s_got = json.load(f)
    with open(tmp_path / "ref" / "summary.json") as f:
        s_want = json.load(f)
    assert strip(s_got) == strip(s_want)


def test_worker_larger_than_every_node_type_is_one_line(cluster, tmp_path):
    recipe = write_recipe(tmp_path, "gpu", epochs=1,
                          resources={"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1})
    r = run_cli("tune", "--search", recipe, "--address", cluster.address, env=cluster_env(),
                timeout=180)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no node type of the cluster offers that" in lines[0], r.stderr
    assert "ray.worker.cpu: 1 CPU, 0 GPU" in lines[0]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare(1) for a private mount namespace")
def test_storage_the_worker_nodes_cannot_see_is_one_line_at_the_first_trial(cluster, tmp_path):
    """The driver runs in its own mount namespace with a tmpfs over the storage folder: it
    writes there, the worker nodes (started outside) see the empty folder beneath."""
    recipe = write_recipe(tmp_path, "private", epochs=3, max_failures=0)
    storage = tmp_path / "exp"
    storage.mkdir()
    inner = " ".join(f"'{a}'" for a in tune_args(cluster, recipe))
    t0 = time.time()
    r = subprocess.run(["unshare", "-m", "sh", "-c",
                        f"mount -t tmpfs tmpfs '{storage}' && exec {inner}"],
                       cwd=REPO, env=cluster_env(), capture_output=True, text=True, timeout=400)
    took = time.time() - t0
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not shared with the worker nodes" in lines[0], r.stderr
    assert str(storage) in lines[0] and "--resume" in lines[0]
    # Found when the trial started: no epoch ran anywhere (the nodes' view of the folder).
    assert not any(records(d) for d in trial_dirs(str(storage / "private"))), took
