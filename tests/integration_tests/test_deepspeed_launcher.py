"""The deepspeed launcher itself (``deepspeed --no_local_rank --num_gpus 2 --module seltrain
train ...``) drives
``engine: deepspeed`` on 2 CPU ranks (gloo), and ``--resume`` continues a DeepSpeed run the
same way it continues a DDP one.

First job: ZeRO-2 in bf16 from configs/deepspeed/zero2_bf16.json, two epochs of two steps.
Second job: the same command with ``--resume`` loads checkpoints/last.pt and DeepSpeed's
partitioned state beside it on both ranks, finds the run complete and rewrites its summary.

Kill and restart: rank 1 SIGKILLs itself at global step 2, the first step of epoch 2, just after
epoch 1's checkpoint (SELTRAIN_TEST_KILL_AT_STEP, read by the trainer). The deepspeed launcher
has no restarts: it sees a rank exit non-zero, terminates the other rank and exits non-zero
itself, within seconds (it polls its ranks once a second). The user's restart is the same
command with ``--resume`` (the fault injection is not set again); it continues from epoch 1's
checkpoint and ends with the summary and metrics of an uninterrupted run started beside it.
Before that restart, one that fails: a folder where rank 1's ZeRO partition of epoch 2 goes
stops both ranks with rank 1's one line, and leaves last.pt at epoch 1.

The /dev/shm files DeepSpeed's CPU all-reduce leaves (named for MASTER_ADDR and MASTER_PORT)
are removed for our ports only: other jobs on the machine have their own.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from helpers import (REPO, TINY, evaluate_checkpoint, free_port, subprocess_env,
                     torch_extensions_dir)

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]

STEPS = 2  # per epoch
# Global steps count from 0: step STEPS is the first of epoch 2, after epoch 1's checkpoint.
KILL_AT = STEPS
# Wall-clock and throughput differ between any two runs, and so does the folder.
TIMING_KEYS = {"images_per_s", "train_time_s", "run_dir"}
TIMEOUT_S = 400


def _remove_shm(ports) -> None:
    for name in os.listdir("/dev/shm"):
        if name.startswith("deepspeed") and any(f"_{p}_" in name for p in ports):
            path = os.path.join("/dev/shm", name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


def _command(out_dir, port, *extra_args, **env) -> tuple[list[str], dict]:
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    # --no_local_rank: the launcher would put --local_rank=N *before* the subcommand, where
    # the top-level parser does not take it; LOCAL_RANK in the environment says the same.
    cmd = [launcher, "--no_local_rank", "--num_gpus", "2", "--master_port", str(port),
           "--module",
           "seltrain", "train", "configs/synthetic.yaml", *TINY, "train.epochs=2",
           f"train.max_steps_per_epoch={STEPS}", "train.engine=deepspeed", "train.bf16=true",
           "train.deepspeed_config=configs/deepspeed/zero2_bf16.json", "run.name=ds",
           f"run.out_dir={out_dir}", "run.tensorboard=false", *extra_args]
    full_env = subprocess_env(TORCH_EXTENSIONS_DIR=torch_extensions_dir(),
                              SELTRAIN_DIST_TIMEOUT=120,
                              # The launcher's subprocesses find the venv's python this way.
                              PATH=os.path.dirname(sys.executable) + os.pathsep
                              + os.environ.get("PATH", ""), **env)
    return cmd, full_env


def _start(out_dir, port, log_name, *extra_args, **env) -> subprocess.Popen:
    """The launcher in its own session, so that a hang is ended by its process group alone;
    its output in a file beside the run (two run at once: pipes would fill and block)."""
    cmd, full_env = _command(out_dir, port, *extra_args, **env)
    os.makedirs(out_dir, exist_ok=True)
    log = open(os.path.join(out_dir, log_name), "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    proc.log = log
    return proc


def _finish(proc: subprocess.Popen) -> str:
    """Wait for the launcher; one still running after TIMEOUT_S is a hang: kill its group."""
    try:
        proc.wait(timeout=TIMEOUT_S)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        hung = True
    proc.log.close()
    with open(proc.log.name) as f:
        out = f.read()
    assert not hung, f"still running after {TIMEOUT_S}s:\n{out[-4000:]}"
    return out


def _deepspeed(out_dir, *extra_args, ports: list, **env) -> subprocess.CompletedProcess:
    ports.append(free_port())
    cmd, full_env = _command(out_dir, ports[-1], *extra_args, **env)
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def _results(run_dir) -> tuple[dict, list[dict]]:
    # parse_constant: a NaN (batch SI never read in a short alpha = 0 run) compares equal.
    with open(run_dir / "summary.json") as f:
        summary = json.load(f, parse_constant=str)
    with open(run_dir / "metrics.jsonl") as f:
        records = [json.loads(line, parse_constant=str) for line in f if line.strip()]
    return summary, records


def test_deepspeed_launcher_trains_and_resumes(tmp_path):
    ports: list[int] = []
    try:
        first = _deepspeed(tmp_path, ports=ports)
        second = _deepspeed(tmp_path, "--resume", ports=ports)
    finally:
        _remove_shm(ports)
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

    from seltrain.checkpoint import load_trained_model

    model, best, cfg = load_trained_model(str(run))
    assert cfg.train.engine == "deepspeed"
    assert sum(p.numel() for p in model.parameters()) > 0


def test_deepspeed_run_reports_what_its_checkpoint_scores(tmp_path):
    """ZeRO-1 in float32 on 2 ranks: the test accuracy and per-layer SI the run reports for its
    best epoch are those of its own best.pt evaluated in one process (every rank evaluates
    with rank 0's BatchNorm statistics, the ones in the checkpoint)."""
    ports: list[int] = []
    try:
        p = _deepspeed(tmp_path, "train.bf16=false", "train.deepspeed_config=null",
                       "train.epochs=1", ports=ports)
    finally:
        _remove_shm(ports)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    summary, _ = _results(tmp_path / "ds")
    assert summary["engine"] == "deepspeed" and summary["world_size"] == 2
    one = evaluate_checkpoint(str(tmp_path / "ds"))
    assert one["n"] == 256 and summary["test_acc"] == one["acc"]
    assert summary["test_si_per_layer"].keys() == one["si_per_layer"].keys()
    for layer, si in one["si_per_layer"].items():
        assert abs(summary["test_si_per_layer"][layer] - si) <= 1e-12, layer


@pytest.mark.faults
def test_deepspeed_sigkilled_rank_stops_the_job_and_resume_matches_uninterrupted(tmp_path):
    ports = [free_port() for _ in range(4)]
    clean_dir, killed_dir = tmp_path / "clean", tmp_path / "killed"
    try:
        clean = _start(clean_dir, ports[0], "clean.log")
        killed = _start(killed_dir, ports[1], "killed.log", SELTRAIN_TEST_KILL_AT_STEP=KILL_AT)
        killed_out = _finish(killed)
        # Before the restart: only epoch 1 is recorded and checkpointed.
        with open(killed_dir / "ds" / "metrics.jsonl") as f:
            epochs_before = [json.loads(line)["epoch"] for line in f if line.strip()]
        last_before = torch.load(killed_dir / "ds" / "checkpoints" / "last.pt",
                                 weights_only=True)
        # A first restart whose rank 1 alone cannot write its ZeRO partition of epoch 2's
        # checkpoint: a folder stands where the file goes. Both ranks must stop with one line.
        tag_dir = killed_dir / "ds" / "checkpoints" / "deepspeed" / f"last-step{2 * STEPS}"
        obstacles = [tag_dir / f"{prefix}zero_pp_rank_1_mp_rank_00_optim_states.pt"
                     for prefix in ("", "bf16_")]
        for o in obstacles:
            o.mkdir(parents=True)
        blocked = _start(killed_dir, ports[2], "blocked.log", "--resume")
        blocked_out = _finish(blocked)
        last_blocked = torch.load(killed_dir / "ds" / "checkpoints" / "last.pt",
                                  weights_only=True)
        for o in obstacles:  # the user's fix; rank 0's files of the failed tag stay
            o.rmdir()
        resumed = _start(killed_dir, ports[3], "resumed.log", "--resume")
        resumed_out = _finish(resumed)
        clean_out = _finish(clean)
    finally:
        _remove_shm(ports)

    assert clean.returncode == 0, clean_out[-4000:]
    # The kill happened: rank 1 died of SIGKILL, and the launcher ended the job, non-zero,
    # instead of leaving rank 0 waiting in a collective (a hang would have failed _finish).
    assert killed.returncode != 0
    # The launcher names the first failed rank it finds: rank 1 (SIGKILL), or rank 0 when
    # its one line (its collective failed as its peer died) and exit came first.
    lost = "seltrain: error: rank 0 lost contact with another rank"
    assert "exits with return code = -9" in killed_out or (
        lost in killed_out and "exits with return code = 5" in killed_out), killed_out[-4000:]
    assert "epoch 1/2" in killed_out and "epoch 2/2" not in killed_out
    # Rank 0's collective fails when its peer dies: one line, not a traceback.
    assert "Traceback" not in killed_out, killed_out[-4000:]
    if "lost contact" in killed_out:
        assert lost in killed_out
    assert epochs_before == [0] and last_before["epoch"] == 0
    assert last_before["global_step"] == KILL_AT

    # One rank's failed partition: every rank stops with the same line (no hang, which
    # _finish would have failed), and last.pt still names epoch 1's complete checkpoint.
    assert blocked.returncode != 0
    assert "epoch 2/2" in blocked_out and "Traceback" not in blocked_out, blocked_out[-4000:]
    assert (f"seltrain: error: rank 1 could not write its part of the DeepSpeed checkpoint "
            f"{tag_dir} (RuntimeError: open file failed with strerror: Is a directory); "
            ) in blocked_out, blocked_out[-4000:]
    assert ("; last.pt was not updated and the previous checkpoints are kept: fix that and "
            "continue with --resume") in blocked_out
    assert last_blocked["epoch"] == 0 and last_blocked["global_step"] == KILL_AT

    assert resumed.returncode == 0, resumed_out[-4000:]
    for r in (0, 1):
        assert (f"seltrain: rank {r} of world size 2 (local rank {r}), backend gloo, device "
                "cpu, launcher deepspeed") in resumed_out
    assert "resuming" in resumed_out and "after epoch 1" in resumed_out, resumed_out[-4000:]
    assert "epoch 1/2" not in resumed_out and "epoch 2/2" in resumed_out

    a, ra = _results(clean_dir / "ds")
    b, rb = _results(killed_dir / "ds")
    assert b["world_size"] == 2 and b["engine"] == "deepspeed" and b["epochs"] == 2
    assert set(a) == set(b)
    assert {k: v for k, v in a.items() if k not in TIMING_KEYS} \
        == {k: v for k, v in b.items() if k not in TIMING_KEYS}
    # The resumed sink truncates metrics.jsonl to the checkpoint: no duplicated epochs, and
    # every epoch's record (train loss, val/test accuracy and SI per layer) matches.
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb] == [0, 1]
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k not in TIMING_KEYS} \
            == {k: v for k, v in y.items() if k not in TIMING_KEYS}, x["epoch"]
    tags = sorted(os.listdir(killed_dir / "ds" / "checkpoints" / "deepspeed"))
    assert [t for t in tags if t.startswith("last-")] == [f"last-step{2 * STEPS}"]
