"""`ray up` end to end on loopback: the documented cluster commands, run for real on one machine.

tests/loopback_cluster.py makes a throwaway user, an sshd on a spare port of 127.0.0.1 and
127.0.0.2, the user's Python (the lock's packages) and a loopback variant of
cluster/local.yaml. Then, as that user and as docs/tune-and-clusters.md says: `ray up`, the
worker at 127.0.0.2 joins over SSH (autoscaler v1, as local.yaml sets), `ray exec ... 'ray
status'`, `ray job submit --working-dir . -- seltrain tune --search quickstart --address auto`
(tiny settings), the experiment folder's results.csv and plots, `ray down`, and nothing left:
no process of the user, no Ray port listening, no sshd, no user.

Needs root, openssh-server, rsync and ss (the Makefile installs them as root); skipped
otherwise. Wall time on this 2-core machine: 4 min at a load average of about 10 from other
jobs, 7 min at about 20; most of it Ray and PyTorch start-up and the 4 one-epoch trials.
"""
from __future__ import annotations

import csv
import json
import os
import pwd
import re
import time

import pytest

import loopback_cluster as loopback

pytest.importorskip("ray")
pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.slow]

ALPHAS = {-10.0, -1.0, 0.0, 1.0}  # tune/quickstart.yaml's grid


def _train_worker_ips(lc: loopback.LoopbackCluster) -> list[str]:
    """The node IP of every Ray Train worker actor the search ran (State API, dead ones too)."""
    ip = {n["node_id"]: n["node_ip"] for n in lc.nodes(alive_only=False)}
    actors = loopback.json_tail(lc.run(
        f"ray list actors --address {loopback.HEAD}:{lc.ports['gcs']} --format json --detail "
        "--limit 1000 --filter class_name=RayTrainWorker", timeout=120, log="list-actors"))
    return sorted(ip.get(a["node_id"], a["node_id"]) for a in actors)


def test_ray_up_runs_quickstart_search_on_two_nodes_then_down_leaves_nothing():
    why = loopback.unavailable()
    if why:
        pytest.skip(why)
    with loopback.LoopbackCluster() as lc:
        user, home, ssh_port = lc.user, lc.home, lc.ports["ssh"]
        lc.ray_up()
        # Job submission only from this machine: the dashboard listens on 127.0.0.1 alone.
        assert loopback.listen_addresses(lc.ports["dashboard"]) == {"127.0.0.1"}
        # The worker: launched by the head's autoscaler over SSH to 127.0.0.2.
        lc.wait_for_nodes(2, timeout=240)
        nodes = lc.nodes()
        # The head's node IP is this machine's address (Ray replaces 127.0.0.1 on the head).
        head_ip = next(n["node_ip"] for n in nodes if n["is_head_node"])
        assert sorted(n["node_ip"] for n in nodes) == sorted([head_ip, loopback.WORKER])
        assert head_ip != loopback.WORKER

        # `ray status` on the head: 2 nodes of 1 CPU, idle, none pending or failed. (Its node
        # list names only the worker: the autoscaler knows the head as 127.0.0.1, Ray as
        # this machine's address.)
        # The autoscaler's view trails the GCS by one or two update periods (its monitor polls
        # every few seconds, slower on a loaded machine): read it until it shows the worker.
        deadline = time.monotonic() + 120
        while True:
            status = lc.ray_exec("ray status")
            if re.search(r"\b0\.0/2\.0 CPU", status) or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert re.search(r"\b0\.0/2\.0 CPU", status), status[-3000:]
        assert "(no pending nodes)" in status and "(no failures)" in status, status[-3000:]

        # The documented command (one short epoch per trial: loopback.QUICKSTART_TINY).
        search, exp = lc.quickstart()
        out = lc.submit(search, timeout=900)
        assert re.search(r"Job 'raysubmit_\w+' succeeded", out), out[-3000:]
        # What the user reads: the search console, each trial's epoch line exactly once, no
        # traceback, and where to point TensorBoard.
        epoch_lines = [ln for ln in out.splitlines() if re.search(r"\bepoch 1/1\b", ln)]
        assert len(epoch_lines) == len(ALPHAS), "\n".join(epoch_lines) or out[-3000:]
        assert "Traceback" not in out and "tensorboard --logdir" in out, out[-3000:]

        with open(os.path.join(exp, "results.csv")) as f:
            rows = list(csv.DictReader(f))
        assert {float(r["alpha"]) for r in rows} == ALPHAS, rows
        assert all(r["complete"] == "True" and r["epochs_run"] == "1" for r in rows), rows
        for r in rows:
            acc = float(r["best_val_acc"])
            assert 0.0 < acc <= 1.0, r
            with open(os.path.join(exp, "trials", r["trial"], "metrics.jsonl")) as f:
                assert [json.loads(ln)["epoch"] for ln in f if ln.strip()] == [0]
        plots = sorted(os.listdir(os.path.join(exp, "plots")))
        assert {"test_acc_vs_alpha.png", "si_vs_alpha.png", "acc_vs_si.png"} <= set(plots)
        assert all(os.path.getsize(os.path.join(exp, "plots", p)) > 1000 for p in plots)

        # One Train worker per trial; 2 concurrent trials on 1-CPU nodes: both nodes trained.
        ips = _train_worker_ips(lc)
        assert len(ips) == 4 and set(ips) == {head_ip, loopback.WORKER}, ips

        lc.ray_down()
        procs, ports = lc.leftovers(timeout=60)
        assert procs == [], procs  # `ray down` stopped every Ray process of the user
        assert ports == set(), ports  # GCS, dashboard, client, agents, object managers
    # The harness's own clean-up: no sshd on the port, no user, no home.
    assert loopback.listening([ssh_port]) == set()
    with pytest.raises(KeyError):
        pwd.getpwnam(user)
    assert not os.path.exists(home)
