"""Shared test helpers: run the real CLI in a subprocess, and small synthetic recipes.

Test modules import them as ``from helpers import ...``: pytest puts ``tests/`` on the import
path (``pythonpath`` in pyproject.toml), so no test edits ``sys.path``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    # The checkout, and tests/ for test modules that run themselves as rank scripts under
    # torchrun or the deepspeed launcher (they import these helpers as pytest does).
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO, os.path.join(REPO, "tests"), env.get("PYTHONPATH")) if p)
    env.pop("SELTRAIN_DEBUG", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(*args, timeout=600, env=None, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seltrain", *map(str, args)], cwd=cwd,
                          env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a rendezvous or a dashboard the test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def randomise_bn(model: nn.Module, seed: int = 0, mean_std: float = 0.5) -> nn.Module:
    """Every BatchNorm given random running statistics and affine parameters, in eval mode.

    Eval-mode BN at its init (mean 0, var 1, gamma 1, beta 0) maps 0 to 0, which would let an
    ablation placed before a BN, or a fold that forgets one of its terms, pass unnoticed."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(mean_std * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def torch_extensions_dir() -> str:
    """Where DeepSpeed JIT-builds its CPU shm_comm op for the tests: TORCH_EXTENSIONS_DIR (the
    Makefile sets it inside .venv), else beside this venv. One folder per venv: two checkouts
    sharing one folder rebuild the op over the library the other's ranks have loaded (seen
    with two suites at once: ranks aborting at exit, "terminate called without an active
    exception")."""
    path = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(sys.prefix, "torch_extensions")
    os.makedirs(path, exist_ok=True)
    return path


def evaluate_checkpoint(run_dir: str, split: str = "test") -> dict:
    """One process's evaluation of a run's best.pt, as `seltrain analyze selectivity` reads
    it (the analyses' own target, probes and float64 class statistics), plus the accuracy:
    {"acc", "n", "si_per_layer"}. What a run reports for its best epoch must equal this."""
    import torch

    from seltrain.analysis import unit_selectivity
    from seltrain.analysis.target import load_target

    ckpt = os.path.join(run_dir, "checkpoints", "best.pt")
    opts = unit_selectivity.SelectivityOptions(split=split, device="cpu")
    target = load_target(run_dir, ckpt, opts)
    si = unit_selectivity.compute(target, opts)["summary"]["si_per_layer"]
    correct = n = 0
    with torch.no_grad():
        for x, y in target.data:
            correct += int((target.model(x).argmax(1) == y).sum())
            n += len(y)
    return {"acc": correct / n, "n": n, "si_per_layer": si}
