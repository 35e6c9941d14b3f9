"""Checkpoints: written atomically, read with ``weights_only=True``; a run's ``Checkpointer``.

A checkpoint is a plain dict of tensors and Python scalars (no pickled classes), so it loads
under ``torch.load(weights_only=True)``. The bytes are serialised in memory and written with
``seltrain.atomic.atomic_write`` (a temporary beside the file, fsynced, renamed over it): a
crash or a full disk mid-write leaves the previous checkpoint intact, never a truncated file
with the real name. A full disk is reported as such (torch's zip writer would only say
"unexpected pos"). Temporaries whose writer died are removed by the next run that holds the
run folder's lock (``RunFolder.claim``).

``Checkpointer`` is what the trainer asks of a run's ``checkpoints/``: ``save`` after every
epoch (last.pt, best.pt as its copy, and ``epoch_NNN.pt`` as another for the epochs
``run.keep_epochs`` names), ``resume`` (the recipe compared before any weights load, then
weights, optimizer, schedule and RNG), ``repair`` (a best.pt or kept epoch's copy that a crash
left behind).

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

import io
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field

import torch

from seltrain import distributed
from seltrain.atomic import atomic_write
from seltrain.config import Config, flat_keys
from seltrain.errors import CheckpointError, ConfigError, SeltrainError, excerpt, is_disk_full
from seltrain.rng import rng_state, set_rng_state


def _no_space(path: str) -> CheckpointError:
    return CheckpointError(f"no space left on {os.path.dirname(os.path.abspath(path))} while "
                           f"writing {os.path.basename(path)}; the previous checkpoints are kept: "
                           "free space there and continue with --resume")


def _write_replace(path: str, write) -> None:
    """``write(file)`` into ``path`` atomically; a full disk is a CheckpointError."""
    try:
        with atomic_write(path, "wb") as f:
            write(f)
    except Exception as e:
        if is_disk_full(e, os.path.dirname(os.path.abspath(path))):
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


def epoch_name(epoch: int) -> str:
    """The name (without .pt) of the copy ``run.keep_epochs`` keeps of 0-based ``epoch``:
    ``epoch_003``, three digits so that a folder listing sorts by epoch."""
    return f"epoch_{epoch:03d}"


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


def which_names(which: str = "best") -> tuple[str, ...]:
    """The checkpoint files ``--checkpoint`` names, in the order they are looked up: best
    (best.pt, else last.pt), last, or a kept epoch (``epoch_003``)."""
    return RUN_CHECKPOINTS if which == "best" else (f"{which}.pt",)


def kept_epochs(run_dir: str) -> list[str]:
    """The kept epochs' checkpoints of ``run_dir`` (``run.keep_epochs``), in epoch order."""
    folder = os.path.join(run_dir, "checkpoints")
    names = sorted(f for f in (os.listdir(folder) if os.path.isdir(folder) else ())
                   if re.fullmatch(r"epoch_\d{3,}\.pt", f))
    return [os.path.abspath(os.path.join(folder, f))
            for f in sorted(names, key=lambda f: int(f[6:-3]))]


def _run_checkpoints(run_dir: str, which: str) -> list[str]:
    """The checkpoints of ``run_dir`` that ``which`` picks: every kept epoch's (``kept``) or
    the first of ``which_names`` there is."""
    if which == "kept":
        return kept_epochs(run_dir)
    one = run_checkpoint(run_dir, which_names(which))
    return [one] if one else []


def _missing(run: str, which: str) -> str:
    """Why ``run`` has no checkpoint ``which``, with the kept epochs it does have."""
    if which == "best":
        return ("no checkpoints/best.pt or checkpoints/last.pt (the run ended or was stopped "
                "before its first checkpoint)")
    if which == "kept":
        return ("no kept epochs (no checkpoints/epoch_NNN.pt; run.keep_epochs names the "
                "epochs a run keeps)")
    kept = [os.path.basename(f)[:-3] for f in kept_epochs(run)]
    return (f"no checkpoints/{which}.pt (kept epochs: {', '.join(kept) or 'none'}; "
            "run.keep_epochs names the epochs a run keeps)")


def find_checkpoints(path: str, skipped: list | None = None,
                     which: str = "best") -> list[tuple[str, str]]:
    """[(run folder, checkpoint file)] for a checkpoint file, a run folder (its best.pt, else
    last.pt; or the one ``which`` names, ``which_names``; ``kept``: every kept epoch's) or an
    experiment folder (the same for every run folder under trials/, or under the folder
    itself). In an experiment, every run folder without that checkpoint is appended to
    ``skipped`` as (folder, why)."""
    if os.path.isfile(path):
        if which != "best":
            raise ConfigError(f"--checkpoint {which} picks among a run folder's checkpoints, "
                              f"but {path} is a checkpoint file already; leave --checkpoint "
                              "out, or give the run folder")
        ckpt = os.path.abspath(path)
        parent = os.path.dirname(ckpt)
        run = os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else parent
        return [(run, ckpt)]
    if not os.path.isdir(path):
        raise CheckpointError(f"no checkpoint, run folder or experiment at {path}")
    own = _run_checkpoints(path, which)
    if own:
        return [(os.path.abspath(path), c) for c in own]
    if which != "best" and _looks_like_a_run(path):
        raise CheckpointError(f"{path} has {_missing(path, which)}")
    root = trials_root(path)
    found = []
    for name in sorted(os.listdir(root)):
        run = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(run):
            continue
        ckpts = _run_checkpoints(run, which)
        if ckpts:
            found += [(os.path.abspath(run), c) for c in ckpts]
        elif skipped is not None and _looks_like_a_run(run):
            skipped.append((os.path.abspath(run), _missing(run, which)))
    if not found:
        if which != "best":
            want = "epoch_NNN" if which == "kept" else which
            raise CheckpointError(f"{path} holds no checkpoints/{want}.pt, nor "
                                  f"trials/*/checkpoints/{want}.pt (run.keep_epochs names "
                                  "the epochs a run keeps)")
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
                            ckpt["image_size"], dropout=cfg.model.dropout,
                            stem=cfg.model.stem)
        model.load_state_dict(ckpt["model"])
    except ConfigError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} does not match a seltrain model "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    return model.to(device).eval(), ckpt, cfg


# --------------------------------------------------------------------------- a run's checkpoints

@dataclass
class TrainState:
    """Where a run stands: saved in every checkpoint, given back by ``Checkpointer.resume``."""
    epoch: int = -1            # the last epoch trained (-1: none yet)
    global_step: int = 0       # optimizer steps taken
    best: dict = field(default_factory=dict)        # the best epoch's record so far
    throughput: list = field(default_factory=list)  # images/s of every epoch trained


# Recipe keys that may change between an interrupted run and its resumption.
# run.keep_epochs only adds copies of later epochs' last.pt: which ones never changes a number.
RESUME_FREE_KEYS = ("run.progress", "run.tensorboard", "data.num_workers", "run.out_dir",
                    "data.root", "data.on_device", "run.keep_epochs")


class Checkpointer:
    """A run's ``checkpoints/``, for the trainer: ``save`` after every epoch, ``resume`` before
    the first, ``repair`` of a best.pt that a crash left older than last.pt.

    ``model_meta``: what rebuilds the network without the recipe's data (layer_names, arch,
    num_classes, in_channels, image_size), stored in every checkpoint for
    ``load_trained_model`` and the analyses."""

    def __init__(self, run_dir: str, engine, ctx, cfg: Config, model_meta: dict):
        self.run_dir = run_dir
        self.folder = os.path.join(run_dir, "checkpoints")
        self.engine, self.ctx, self.cfg = engine, ctx, cfg
        self.model_meta = dict(model_meta)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.pt")

    # ---------------------------------------------------------------- saving
    def save(self, state: TrainState, *, new_best: bool, history: list | None) -> str:
        """last.pt, then best.pt as a byte copy of it when this epoch is a new best; returns
        last.pt's path. ``history``: every epoch record so far (rank 0's metrics.jsonl, in
        strict-JSON form), kept in the checkpoint so ``--resume`` can rebuild a lost file.

        In this order a crash or a full disk can never leave a best.pt newer than last.pt or
        without one; a best.pt left older than last.pt's best record is restored on resume
        (``repair``). Rank 0 tells every rank whether it worked (a broadcast, which also
        serves as the barrier), so a failed write ends all ranks with its one line."""
        err, last = None, self.path("last")
        try:
            self._write(last, state, history)
            if new_best and self.ctx.is_main:
                atomic_copy(last, self.path("best"))
            if self._kept(state.epoch) and self.ctx.is_main:
                # A byte copy, written atomically: a resume rewrites it whole (``repair``),
                # never a second file for the same epoch.
                atomic_copy(last, self.path(epoch_name(state.epoch)))
        except SeltrainError as e:
            if not self.ctx.distributed:
                raise
            err = e
        err = distributed.broadcast_object(err)
        if err is not None:
            raise err
        return last

    def _write(self, path: str, state: TrainState, history: list | None) -> None:
        extra = {"epoch": state.epoch, "global_step": state.global_step,
                 "best": json.dumps(state.best), "throughput": json.dumps(state.throughput),
                 "config": self.cfg.to_dict(), "rng": rng_state(self.ctx.device),
                 **self.model_meta}
        if history is not None:  # rank 0: a copy of metrics.jsonl (strict JSON text)
            extra["history"] = json.dumps(history, allow_nan=False)
        try:
            self.engine.save(path, extra)
        except CheckpointError:
            raise
        except Exception as e:
            if not is_disk_full(e, self.folder):
                raise
            raise CheckpointError(f"no space left on {self.folder} while writing "
                                  f"{os.path.basename(path)}; the previous checkpoints are "
                                  "kept: free space there and continue with --resume") from None

    # ---------------------------------------------------------------- resuming
    def resume(self) -> tuple[TrainState, list | None]:
        """The run's state after last.pt's epoch, with the engine's weights, optimizer and LR
        schedule and this rank's RNG restored, and the epoch records last.pt carries (None
        in checkpoints without them), from which ``RunSink`` rebuilds a missing, torn or
        short metrics.jsonl. A fresh state where there is no last.pt: ``RunFolder.claim``
        (rank 0, for every rank) has settled that starting afresh is right."""
        last = self.path("last")
        if not os.path.exists(last):
            return TrainState(), None
        saved = saved_config(last)
        if saved is not None:
            self.check_recipe(saved)
        ckpt = self.engine.load(last)
        # The rank's own device: every rank seeds and draws alike (rng_state).
        set_rng_state(ckpt["rng"], self.ctx.device)
        history = json.loads(ckpt["history"]) if "history" in ckpt else None
        state = TrainState(ckpt["epoch"], ckpt["global_step"], json.loads(ckpt["best"]),
                           json.loads(ckpt["throughput"]))
        if self.ctx.is_main:
            print(f"resuming {self.run_dir} after epoch {state.epoch + 1}", flush=True)
            if state.best.get("epoch") == state.epoch:
                self.repair(state.epoch)
            if self._kept(state.epoch):
                self.repair(state.epoch, epoch_name(state.epoch))
        return state, history

    def _kept(self, epoch: int) -> bool:
        return epoch in self.cfg.run.keep_epochs

    def check_recipe(self, saved: dict) -> None:
        """Every recipe key that differs from the checkpoint's, named in one line; run before
        the weights are loaded, so a changed arch or class count is this error, not a
        state-dict mismatch."""
        now, then = flat_keys(self.cfg.to_dict()), flat_keys(saved)
        # A key that a later seltrain added is missing from an older checkpoint: it did not
        # exist then, so its default is what that run trained with.
        defaults = flat_keys(Config().to_dict())
        differ = []
        for key in sorted(set(now) | set(then)):
            if key in RESUME_FREE_KEYS or (key not in then and now.get(key) == defaults.get(key)):
                continue
            if now.get(key) != then.get(key):
                differ.append(f"{key} was {excerpt(then.get(key))}, now {excerpt(now.get(key))}")
        if differ:
            raise CheckpointError(
                f"cannot resume {self.run_dir}: the recipe differs from the checkpoint's in "
                f"{len(differ)} key(s): {'; '.join(differ)}; use the original settings or a "
                "new run.name")

    def repair(self, epoch: int, name: str = "best") -> None:
        """Epoch ``epoch`` (last.pt's) was a new best, so best.pt must equal last.pt; a crash
        (or a full disk) between writing last.pt and copying it to best.pt leaves an older
        best.pt, rewritten here from last.pt. The same for a kept epoch's ``name``
        (``epoch_NNN``), missing when a crash came before its copy."""
        last, best = self.path("last"), self.path(name)
        try:
            ok = torch.load(best, map_location="cpu", weights_only=True, mmap=True)["epoch"] \
                == epoch
        except Exception:  # noqa: BLE001 - missing or unreadable: rewrite it from last.pt
            ok = False
        if not ok:
            atomic_copy(last, best)
            # run.keep_epochs counts from 0, the console's "epoch N/M" from 1
            why = f"epoch {epoch + 1} was the best" if name == "best" else \
                f"epoch {epoch} is in run.keep_epochs"
            print(f"seltrain: restored {best} from last.pt ({why}; the copy had not been made)",
                  file=sys.stderr, flush=True)
