"""The analyses' fan-out on Ray's fake multi-node cluster (tests/fake_cluster.py): a worker
node SIGKILLed mid-analysis (a spot reclaim). Ray reschedules its tasks on another node
(``max_retries``) and the files are those of one process, byte for byte.

Two 1-CPU worker nodes kept alive (min_workers), a head with 0 CPUs, one tiny trained run.
"""
from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import time

import pytest

from helpers import REPO, run_cli

pytest.importorskip("ray")
pytest.importorskip("psutil")

from fake_cluster import FakeCluster, cluster_env  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.slow]

TRAIN = ["data.dataset=synthetic", "data.val_size=64", "data.synthetic.train_size=256",
         "data.synthetic.test_size=128", "data.synthetic.image_size=16", "train.batch_size=64",
         "train.eval_batch_size=128", "train.epochs=1", "run.progress=false"]
ARGS = ["--layers", "layer2.2", "layer3.2", "--max-images", "128", "--device", "cpu"]


def test_a_lost_worker_node_changes_no_number(tmp_path):
    r = run_cli("train", "configs/synthetic.yaml", *TRAIN, f"run.out_dir={tmp_path / 'exp'}",
                "run.name=a0")
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "exp" / "a0"
    r = run_cli("analyze", "ablation", run, *ARGS, "--out", tmp_path / "one")
    assert r.returncode == 0, r.stderr[-2000:]
    with FakeCluster(max_workers=3, min_workers=2, idle_timeout_minutes=5) as fc:
        fc.wait_workers(lambda n: n >= 2, timeout=180)
        p = subprocess.Popen([sys.executable, "-m", "seltrain", "analyze", "ablation", str(run),
                              *ARGS, "--address", fc.address], cwd=REPO, env=cluster_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert "analysis task(s) on Ray" in p.stdout.readline()
            time.sleep(3)  # the tasks are running on both worker nodes
            victim = fc.workers()[0]
            assert fc.kill_node(victim) > 0
            out, err = p.communicate(timeout=400)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 0, (out[-3000:], err[-3000:])
        assert "-- 5 of 5 done, 0 running, 0 pending" in out, out
        assert victim not in fc.workers()
    names = sorted(f for f in os.listdir(tmp_path / "one") if f.endswith((".json", ".csv")))
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "one", run / "analysis" / "ablation",
                                           names, shallow=False)
    assert len(names) >= 5 and not mismatch and not errors, (mismatch, errors)
