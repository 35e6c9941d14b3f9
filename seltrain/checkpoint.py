"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and Python scalars (no pickled classes), so it loads
under ``torch.load(weights_only=True)``. The bytes are serialised in memory, written to a
temporary file in the same folder (``.tmp-<pid>-*.pt``), fsynced, and renamed over the old
one: a crash or a full disk mid-write leaves the previous checkpoint intact, never a truncated
file with the real name. A full disk is reported as such (torch's zip writer would only say
"unexpected pos"). Temporaries whose writer died are removed by the next run that holds the
run folder's lock (``remove_stale_temporaries``).

Trust: only seltrain's own ``.pt`` files are read here, and without unpickling code. DeepSpeed's
ZeRO shard files (``checkpoints/deepspeed/``, read by DeepSpeed on ``--resume``) and Ray Tune's
experiment state (``seltrain tune --resume``) are pickles: resume only runs you trust.
"""
from __future__ import annotations

import glob
import io
import os
import shutil
import tempfile

import torch

from seltrain.errors import CheckpointError, is_disk_full


def _no_space(path: str) -> CheckpointError:
    return CheckpointError(f"no space left on {os.path.dirname(os.path.abspath(path))} while "
                           f"writing {os.path.basename(path)}; the previous checkpoints are kept: "
                           "free space there and continue with --resume")


def _write_replace(path: str, write) -> None:
    """``write(file)`` into a temporary beside ``path``, fsync, rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, Exception) and is_disk_full(e, folder):
            raise _no_space(path) from None
        raise


def atomic_save(obj, path: str) -> None:
    # In memory first: a short write on a full disk then surfaces as ENOSPC from write(),
    # not as a confused zip-writer error halfway through torch.save.
    buf = io.BytesIO()
    torch.save(obj, buf)
    _write_replace(path, lambda f: f.write(buf.getbuffer()))


def atomic_copy(src: str, dst: str) -> None:
    """``dst`` becomes a byte copy of ``src``, atomically (best.pt from last.pt)."""
    with open(src, "rb") as s:
        _write_replace(dst, lambda f: shutil.copyfileobj(s, f, 16 << 20))


def remove_stale_temporaries(folder: str, patterns=(".tmp-*.pt",)) -> list[str]:
    """Delete the temporaries (``patterns``) left in ``folder`` by writers that died; returns
    their names. Only call this while holding the run folder's lock: then no live writer
    exists there."""
    removed = []
    found = (p for pattern in patterns for p in glob.glob(os.path.join(folder, pattern)))
    for tmp in sorted(found):
        try:
            os.unlink(tmp)
            removed.append(os.path.basename(tmp))
        except FileNotFoundError:
            pass
    return removed


def load(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt files raise many kinds of errors
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable "
                              f"({type(e).__name__}); restore a copy, or move the run folder "
                              "away and train again") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a seltrain checkpoint (no 'model' entry)")
    return ckpt


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
