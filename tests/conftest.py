"""Shared test helpers: run the real CLI in a subprocess, and small synthetic recipes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

# A tiny synthetic run: a few seconds per epoch on 2 CPU cores.
TINY = [
    "data.dataset=synthetic", "data.val_size=128",
    "data.synthetic.train_size=512", "data.synthetic.test_size=256",
    "data.synthetic.image_size=16", "train.batch_size=64", "train.eval_batch_size=256",
    "train.epochs=2", "run.progress=false",
]


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SELTRAIN_DEBUG", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(*args, timeout=600, env=None, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seltrain", *map(str, args)], cwd=cwd,
                          env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
