"""Multi-node launchers on loopback: two launcher processes started the way two machines would
start them, one rank each, train one job whose results equal the single-node 2-rank job.

- torchrun: two agents, ``--nnodes 2 --nproc_per_node 1``, c10d rendezvous on 127.0.0.1; each
  agent advertises its own loopback address (``--local_addr`` 127.0.0.1 and 127.0.0.2).
- deepspeed: a hostfile naming two hosts (127.0.0.1, 127.0.0.2, ``slots=1`` each) and the same
  ``deepspeed --no_ssh --node_rank N`` command on each "node", the form that needs no pdsh and
  no SSH. With ``--no_ssh`` the hostfile only says how many ranks each node runs and in which
  order (node N's ranks come after those of the nodes listed before it); nothing connects to
  127.0.0.2 (docs/distributed.md, "DeepSpeed launcher").

The reference is the 2-rank single-node run of the same launcher, started at the same time.
Same data, same seed, same global batch split the same way over ranks 0 and 1, and gloo sums
two addends, which is order-free: every metric matches exactly, wall-clock keys aside. For
DeepSpeed this also holds although the single-node job all-reduces through DeepSpeed's
shared-memory op (both ranks on one host) and the two-node job through gloo: each rounds the
same exact two-term sum once.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, TINY, free_port, subprocess_env, torch_extensions_dir

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Two epochs of two steps: enough for a resume-free job to show any drift between the runs.
RECIPE = ["configs/synthetic.yaml", *TINY, "train.epochs=2", "train.max_steps_per_epoch=2",
          "run.tensorboard=false", "run.name=mn"]
# Wall-clock and throughput differ between any two runs, and so does the folder.
TIMING_KEYS = {"images_per_s", "train_time_s", "run_dir"}
TIMEOUT_S = 400


def _env(**extra) -> dict:
    return subprocess_env(SELTRAIN_DIST_TIMEOUT=120,
                          TORCH_EXTENSIONS_DIR=torch_extensions_dir(),
                          # The deepspeed launcher's children find the venv's python this way.
                          PATH=os.path.dirname(sys.executable) + os.pathsep
                          + os.environ.get("PATH", ""), **extra)


def _start(cmd: list[str], log_path) -> tuple[subprocess.Popen, object]:
    """One launcher, as its own session (so a hang can be ended by its process group alone),
    logging to a file (several run at once: pipes would fill and block them)."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    return proc, log


def _wait_all(started: dict) -> dict[str, str]:
    """Wait for every launcher; any still running at the deadline is a hang: kill its group."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc, _ in started.values():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    hung = [name for name, (proc, _) in started.items() if proc.poll() is None]
    for name in hung:
        os.killpg(started[name][0].pid, signal.SIGKILL)
        started[name][0].wait()
    logs = {}
    for name, (proc, log) in started.items():
        log.close()
        with open(log.name) as f:
            logs[name] = f.read()
    assert not hung, f"{hung} still running after {TIMEOUT_S}s:\n" + "\n".join(
        logs[name][-3000:] for name in hung)
    for name, (proc, _) in started.items():
        assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{logs[name][-4000:]}"
    return logs


def _start_lines(log: str) -> list[tuple[int, int, int, str]]:
    """(rank, world size, local rank, launcher) of each seltrain start line in a log."""
    return [(int(r), int(w), int(lr), la) for r, w, lr, la in re.findall(
        r"seltrain: rank (\d+) of world size (\d+) \(local rank (\d+)\), backend gloo, device "
        r"cpu, launcher (\w+)", log)]


def _results(run_dir) -> tuple[dict, list[dict]]:
    # parse_constant: a NaN (batch SI never read in a short alpha = 0 run) compares equal.
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f, parse_constant=str)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line, parse_constant=str) for line in f if line.strip()]
    return summary, records


def _assert_same_results(single_dir, multi_dir) -> dict:
    a, ra = _results(single_dir)
    b, rb = _results(multi_dir)
    assert a["world_size"] == b["world_size"] == 2
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb] == [0, 1]
    assert 0.0 <= b["test_acc"] <= 1.0 and 0.0 < b["test_si"] <= 1.0
    assert set(a) == set(b)
    assert {k: v for k, v in a.items() if k not in TIMING_KEYS} \
        == {k: v for k, v in b.items() if k not in TIMING_KEYS}
    for x, y in zip(ra, rb):
        assert set(x) == set(y)
        assert {k: v for k, v in x.items() if k not in TIMING_KEYS} \
            == {k: v for k, v in y.items() if k not in TIMING_KEYS}, x["epoch"]
    return b


def test_torchrun_two_agents_as_two_nodes_match_one_node(tmp_path):
    port = free_port()
    run = [sys.executable, "-m", "torch.distributed.run"]
    single = run + ["--standalone", "--nproc_per_node", "2", "-m", "seltrain", "train",
                    *RECIPE, f"run.out_dir={tmp_path / 'single'}"]
    started = {"single": _start(single, tmp_path / "single.log")}
    for node in (0, 1):
        # What each machine runs: the same line, its own address.
        cmd = run + ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                     "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"mn{port}",
                     "--local_addr", f"127.0.0.{node + 1}",
                     "-m", "seltrain", "train", *RECIPE, f"run.out_dir={tmp_path / 'multi'}"]
        started[f"node{node}"] = _start(cmd, tmp_path / f"node{node}.log")
    logs = _wait_all(started)

    # One rank per agent, local rank 0 on each, one world of 2 across the two agents.
    per_node = [_start_lines(logs[f"node{n}"]) for n in (0, 1)]
    assert [len(lines) for lines in per_node] == [1, 1], logs
    assert sorted(line[0] for lines in per_node for line in lines) == [0, 1]
    assert all(line[1:] == (2, 0, "torchrun") for lines in per_node for line in lines)
    assert sorted(_start_lines(logs["single"])) == [(0, 2, 0, "torchrun"), (1, 2, 1, "torchrun")]
    _assert_same_results(tmp_path / "single" / "mn", tmp_path / "multi" / "mn")


@pytest.mark.deepspeed
def test_deepspeed_no_ssh_two_nodes_match_one_node(tmp_path):
    from deepspeed.launcher.runner import fetch_hostfile

    # The documented example is a hostfile as the launcher reads it.
    example = fetch_hostfile(os.path.join(REPO, "cluster", "hostfile.example"))
    assert dict(example) == {"node01": 8, "node02": 8}
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\n127.0.0.2 slots=1\n")
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    ds = ["train.engine=deepspeed", "train.bf16=true",
          "train.deepspeed_config=configs/deepspeed/zero2_bf16.json"]
    ports = {"single": free_port(), "multi": free_port()}
    single = [launcher, "--num_gpus", "2", "--master_port", str(ports["single"]),
              "--no_local_rank", "--module", "seltrain", "train", *RECIPE, *ds,
              f"run.out_dir={tmp_path / 'single'}"]
    try:
        started = {"single": _start(single, tmp_path / "single.log")}
        for node in (0, 1):
            cmd = [launcher, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node),
                   "--master_addr", "127.0.0.1", "--master_port", str(ports["multi"]),
                   "--no_local_rank", "--module", "seltrain", "train", *RECIPE, *ds,
                   f"run.out_dir={tmp_path / 'multi'}"]
            started[f"node{node}"] = _start(cmd, tmp_path / f"node{node}.log")
        logs = _wait_all(started)
    finally:
        # DeepSpeed's CPU all-reduce buffers are named for MASTER_ADDR and MASTER_PORT: remove
        # ours only (other jobs on this machine have their own).
        for name in os.listdir("/dev/shm"):
            if name.startswith("deepspeed") and any(f"_{p}_" in name for p in ports.values()):
                path = os.path.join("/dev/shm", name)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)

    for node in (0, 1):
        log = logs[f"node{node}"]
        # Each launcher ran one local process as node N of 2, and it became global rank N.
        assert f"nnodes=2, num_local_procs=1, node_rank={node}" in log, log[-3000:]
        assert _start_lines(log) == [(node, 2, 0, "deepspeed")], log[-3000:]
    assert sorted(_start_lines(logs["single"])) == [(0, 2, 0, "deepspeed"),
                                                    (1, 2, 1, "deepspeed")]
    summary = _assert_same_results(tmp_path / "single" / "mn", tmp_path / "multi" / "mn")
    assert summary["engine"] == "deepspeed"
