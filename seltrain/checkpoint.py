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

Integrity: every checkpoint carries ``model_sha256``, a SHA-256 of its weights (names, dtypes,
shapes and bytes, ``weights_digest``), written with them. ``load`` recomputes it and refuses
a file whose weights no longer match (flipped bits that still unpickle) or hold NaN/inf,
naming the file; checkpoints written before the digest existed load without that check, but
never with non-finite weights.
"""
from __future__ import annotations

import glob
import io
import os
import secrets
import shutil

import torch

from seltrain.errors import CheckpointError, ConfigError, is_disk_full


def _no_space(path: str) -> CheckpointError:
    return CheckpointError(f"no space left on {os.path.dirname(os.path.abspath(path))} while "
                           f"writing {os.path.basename(path)}; the previous checkpoints are kept: "
                           "free space there and continue with --resume")


def _new_temporary(folder: str) -> tuple[int, str]:
    """A new, empty ``.tmp-<pid>-<random>.pt`` in ``folder``: (fd, path).

    Created with mode 0666 less the umask (0644 under the usual 022), like any file a user
    writes, not mkstemp's 0600: the rename keeps the mode, and a 0600 checkpoint is unreadable
    to the other users and nodes that read a shared (NFS) run folder. O_EXCL with a random
    name is what mkstemp does too."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(4)}.pt")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


def _write_replace(path: str, write) -> None:
    """``write(file)`` into a temporary beside ``path``, fsync, rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _new_temporary(folder)
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


DIGEST_KEY = "model_sha256"


def weights_digest(weights: dict) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and raw bytes, in key order."""
    import hashlib

    h = hashlib.sha256()
    for name, t in weights.items():
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r};".encode())
            continue
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _damaged(path: str, why: str) -> CheckpointError:
    use = ("analyse checkpoints/last.pt or an earlier copy of best.pt instead"
           if os.path.basename(path) == "best.pt" else
           "use checkpoints/best.pt (to resume from it, copy it over last.pt) or an earlier "
           "copy of this file instead")
    return CheckpointError(f"checkpoint {path} is damaged ({why}); {use}, or train again")


def verify_weights(path: str, ckpt: dict) -> None:
    """Refuse weights that are not finite, or that no longer match their stored digest."""
    weights = ckpt.get("model")
    if not isinstance(weights, dict):
        return
    for name, t in weights.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(
                torch.isfinite(t).all()):
            raise _damaged(path, f"non-finite values in {name}")
    want = ckpt.get(DIGEST_KEY)
    if want is not None and weights_digest(weights) != want:
        raise _damaged(path, "its weights do not match the checksum stored with them")


def atomic_save(obj, path: str) -> None:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = dict(obj, **{DIGEST_KEY: weights_digest(obj["model"])})
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
    verify_weights(path, ckpt)
    return ckpt


def saved_config(path: str) -> dict | None:
    """The recipe saved in the checkpoint at ``path`` (read without loading the tensors into
    memory), or None if the file has none: what ``--resume`` compares before loading."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - load() reports an unreadable file with its one line
        return None
    return ckpt.get("config") if isinstance(ckpt, dict) else None


# --------------------------------------------------------------------------- finding and loading

# A run's checkpoints in the order they are looked up: the best epoch's, else the last one.
RUN_CHECKPOINTS = ("best.pt", "last.pt")


def run_checkpoint(run_dir: str, names: tuple[str, ...] = RUN_CHECKPOINTS) -> str | None:
    """The first of ``names`` in ``run_dir``/checkpoints, or None."""
    for name in names:
        path = os.path.join(run_dir, "checkpoints", name)
        if os.path.isfile(path):
            return os.path.abspath(path)
    return None


def trials_root(exp_dir: str) -> str:
    """Where an experiment's run folders are: ``exp_dir/trials`` (``seltrain tune``), or the
    folder itself (run folders collected by hand)."""
    trials = os.path.join(exp_dir, "trials")
    return trials if os.path.isdir(trials) else exp_dir


def find_checkpoints(path: str, skipped: list | None = None) -> list[tuple[str, str]]:
    """[(run folder, checkpoint file)] for a checkpoint file, a run folder (its best.pt, else
    last.pt) or an experiment folder (the same for every run folder under trials/, or under
    the folder itself). In an experiment, every run folder without a checkpoint is appended
    to ``skipped`` as (folder, why)."""
    if os.path.isfile(path):
        ckpt = os.path.abspath(path)
        parent = os.path.dirname(ckpt)
        run = os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else parent
        return [(run, ckpt)]
    if not os.path.isdir(path):
        raise CheckpointError(f"no checkpoint, run folder or experiment at {path}")
    own = run_checkpoint(path)
    if own:
        return [(os.path.abspath(path), own)]
    root = trials_root(path)
    found = []
    for name in sorted(os.listdir(root)):
        run = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(run):
            continue
        ckpt = run_checkpoint(run)
        if ckpt:
            found.append((os.path.abspath(run), ckpt))
        elif skipped is not None and _looks_like_a_run(run):
            skipped.append((os.path.abspath(run), "no checkpoints/best.pt or "
                            "checkpoints/last.pt (the run ended or was stopped before its first "
                            "checkpoint)"))
    if not found:
        raise CheckpointError(f"{path} holds no checkpoints/best.pt, checkpoints/last.pt or "
                              "trials/*/checkpoints/best.pt")
    return found


def _looks_like_a_run(folder: str) -> bool:
    """A run folder (of a trial, say) as seltrain leaves it, not some other folder."""
    return any(os.path.exists(os.path.join(folder, f))
               for f in ("config.yaml", "metrics.jsonl", "checkpoints", ".seltrain.lock"))


def load_trained_model(path: str, device="cpu"):
    """(model in eval mode, checkpoint dict, Config) from a checkpoint file or a run folder.
    A checkpoint whose weights do not fit the model its recipe names is a CheckpointError."""
    from seltrain.config import config_from_dict
    from seltrain.models import build_model

    if os.path.isdir(path):
        found = run_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path} holds no checkpoints/best.pt or checkpoints/last.pt")
        path = found
    ckpt = load(path, map_location=device)
    try:
        cfg = config_from_dict(ckpt["config"])
        model = build_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"],
                            ckpt["image_size"])
        model.load_state_dict(ckpt["model"])
    except ConfigError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} does not match a seltrain model "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    return model.to(device).eval(), ckpt, cfg


# --------------------------------------------------------------------------- random state

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
