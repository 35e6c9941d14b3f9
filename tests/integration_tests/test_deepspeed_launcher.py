"""The deepspeed launcher itself (``deepspeed --no_local_rank --num_gpus 2 --module seltrain
train ...``) drives
``engine: deepspeed`` on 2 CPU ranks (gloo), and ``--resume`` continues a DeepSpeed run the
same way it continues a DDP one.

First job: ZeRO-2 in bf16 from configs/deepspeed/zero2_bf16.json, two epochs of two steps.
Second job: the same command with ``--resume`` loads checkpoints/last.pt and DeepSpeed's
partitioned state beside it on both ranks, finds the run complete and rewrites its summary.
(Resuming *mid-run* after a kill is covered for DDP by test_distributed_elastic.py; the engine
interface is the same.) Whatever the launcher leaves in /dev/shm is removed.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import torch

from conftest import REPO, TINY, subprocess_env

EXTENSIONS = os.path.expanduser("~/.cache/seltrain/torch_extensions")
STEPS = 2  # per epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deepspeed(out_dir, *extra_args, **env):
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    # --no_local_rank: the launcher would put --local_rank=N *before* the subcommand, where
    # the top-level parser does not take it; LOCAL_RANK in the environment says the same.
    cmd = [launcher, "--no_local_rank", "--num_gpus", "2", "--master_port", str(_free_port()),
           "--module",
           "seltrain", "train", "configs/synthetic.yaml", *TINY, "train.epochs=2",
           f"train.max_steps_per_epoch={STEPS}", "train.engine=deepspeed", "train.bf16=true",
           "train.deepspeed_config=configs/deepspeed/zero2_bf16.json", "run.name=ds",
           f"run.out_dir={out_dir}", "run.tensorboard=false", *extra_args]
    os.makedirs(EXTENSIONS, exist_ok=True)
    full_env = subprocess_env(TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                                    EXTENSIONS),
                              SELTRAIN_DIST_TIMEOUT=120,
                              # The launcher's subprocesses find the venv's python this way.
                              PATH=os.path.dirname(sys.executable) + os.pathsep
                              + os.environ.get("PATH", ""), **env)
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=400)


def test_deepspeed_launcher_trains_and_resumes(tmp_path):
    shm_before = set(os.listdir("/dev/shm"))
    try:
        first = _deepspeed(tmp_path)
        second = _deepspeed(tmp_path, "--resume")
    finally:
        for name in set(os.listdir("/dev/shm")) - shm_before:
            if name.startswith("deepspeed"):
                path = os.path.join("/dev/shm", name)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    log1 = first.stdout + first.stderr
    log2 = second.stdout + second.stderr
    assert first.returncode == 0, log1[-4000:]
    for r in (0, 1):
        assert (f"seltrain: rank {r} of world size 2 (local rank {r}), backend gloo, device "
                "cpu, launcher deepspeed") in log1
    assert "epoch 2/2" in log1 and "done:" in log1
    assert second.returncode == 0, log2[-4000:]
    assert "resuming" in log2 and "after epoch 2" in log2, log2[-4000:]
    assert "epoch 1/2" not in log2 and "epoch 2/2" not in log2

    run = tmp_path / "ds"
    with open(run / "summary.json") as f:
        summary = json.load(f)
    assert summary["engine"] == "deepspeed" and summary["world_size"] == 2
    with open(run / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [0, 1]
    # DeepSpeed's own state, one tag per checkpoint name, and plain weights_only files.
    tags = sorted(os.listdir(run / "checkpoints" / "deepspeed"))
    assert f"last-step{2 * STEPS}" in tags
    assert not [t for t in tags if t.startswith("last-") and t != f"last-step{2 * STEPS}"]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["engine"] == "deepspeed" and ckpt["epoch"] == 1
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())

    from seltrain.trainer import load_trained_model

    model, best, cfg = load_trained_model(str(run))
    assert cfg.train.engine == "deepspeed"
    assert sum(p.numel() for p in model.parameters()) > 0
