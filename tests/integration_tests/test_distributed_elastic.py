"""Elastic restart: under ``torchrun --max-restarts 1`` a rank SIGKILLed mid-epoch brings the
job back from checkpoints/last.pt, and it finishes with the metrics of an uninterrupted run.

Two real 2-rank gloo jobs run side by side on the tiny synthetic recipe (3 epochs of 6 steps):
one uninterrupted, one whose rank 1 kills itself at global step 8 (epoch 2, after the epoch-1
checkpoint) on its first attempt (SELTRAIN_TEST_KILL_AT_STEP, read by the trainer).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, TINY, subprocess_env

# Two 2-rank torchrun jobs of 3 epochs, one SIGKILLed and restarted (~1-2 min on 2 cores).
pytestmark = [pytest.mark.slow, pytest.mark.faults]

KILL_AT = 8
# Wall-clock and throughput differ between any two runs; everything else must match exactly.
TIMING_KEYS = {"images_per_s", "train_time_s"}


def _torchrun(out_dir, **env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "--max-restarts", "1", "-m", "seltrain", "train", "configs/synthetic.yaml",
           *TINY, "train.epochs=3", "run.name=elastic", f"run.out_dir={out_dir}",
           "run.tensorboard=false", "--resume"]
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(SELTRAIN_DIST_TIMEOUT=120, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_sigkilled_rank_restarts_from_last_checkpoint_and_matches(tmp_path):
    clean = _torchrun(tmp_path / "clean")
    killed = _torchrun(tmp_path / "killed", SELTRAIN_TEST_KILL_AT_STEP=KILL_AT)
    clean_out, _ = clean.communicate(timeout=300)
    killed_out, _ = killed.communicate(timeout=300)
    assert clean.returncode == 0, clean_out[-4000:]
    assert killed.returncode == 0, killed_out[-4000:]
    # The kill really happened, and the second attempt resumed from epoch 1's checkpoint.
    # torchrun names the first failed rank it finds: rank 1 (SIGKILL), or rank 0 when its one
    # line (its collective failed as its peer died) and its exit came first.
    assert "exitcode: -9" in killed_out or (
        "seltrain: error: rank 0 lost contact with another rank" in killed_out
        and "exitcode: 5" in killed_out), killed_out[-4000:]
    assert "resuming" in killed_out and "after epoch 1" in killed_out, killed_out[-4000:]
    assert "resuming" not in clean_out

    a_dir, b_dir = tmp_path / "clean" / "elastic", tmp_path / "killed" / "elastic"
    with open(a_dir / "summary.json") as f:
        a = json.load(f)
    with open(b_dir / "summary.json") as f:
        b = json.load(f)
    for key in ("test_acc", "test_si", "val_acc", "best_epoch", "test_si_per_layer"):
        assert a[key] == b[key], key
    ra, rb = _records(a_dir), _records(b_dir)
    # The resumed sink truncates metrics.jsonl to the checkpoint: no duplicated epochs.
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb] == [0, 1, 2]
    last_a = {k: v for k, v in ra[-1].items() if k not in TIMING_KEYS}
    last_b = {k: v for k, v in rb[-1].items() if k not in TIMING_KEYS}
    assert last_a == last_b
