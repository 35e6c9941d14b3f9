"""Every random number generator a run draws from: seeded at its start (``seed_everything``),
saved with each checkpoint (``rng_state``) and restored on ``--resume`` (``set_rng_state``), so
a resumed run draws what the uninterrupted one would have.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool,
                    cudnn_benchmark: bool | str = "auto") -> None:
    """Seed every RNG, and choose between bitwise reproducibility and cuDNN's fastest kernels.

    ``deterministic``: deterministic algorithms only and no cuDNN benchmarking, so a run (and
    its resumption) is bitwise reproducible. ``cudnn_benchmark``: ``"auto"`` benchmarks conv
    algorithms when CUDA is present and determinism is off (the first steps at each new input
    shape pay for the search; ResNet50 commonly gains 5-20% after that); benchmarking picks
    kernels by timing, so two runs may differ in the last bits (config.validate refuses it
    together with ``deterministic``).
    """
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if cudnn_benchmark == "auto":
        cudnn_benchmark = torch.cuda.is_available() and not deterministic
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark) and not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Set both ways: an earlier Trainer in this process (a Ray worker, a test) may have set it.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def rng_state(device: torch.device | str = "cpu") -> dict:
    """The CPU generator's state, and the CUDA generator's of ``device`` alone: the rank's
    own GPU. Every rank seeds every generator alike and draws alike, so rank 0's one device
    stands for every rank's; and a resume may see other GPUs than the run did
    (``CUDA_VISIBLE_DEVICES=3``, a Ray trial restored on another node), where only its own
    device is sure to exist."""
    state = {"torch": torch.get_rng_state()}
    device = torch.device(device)
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | str = "cpu") -> None:
    """Restore ``rng_state``'s states onto this process's generators: the CUDA state onto
    ``device`` (the rank's own GPU) and no other. A checkpoint that holds a list (one state
    per GPU its writer saw) gives its first, the writer's own device. The states may come
    loaded onto the GPU (``map_location``); torch takes them from host memory only."""
    torch.set_rng_state(state["torch"].cpu())
    saved = state.get("cuda")
    device = torch.device(device)
    if saved is None or device.type != "cuda":
        return
    if isinstance(saved, (list, tuple)):
        saved = saved[0]
    torch.cuda.set_rng_state(saved.cpu(), device)
