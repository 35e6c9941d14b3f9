"""One Tune trial: a driver function that runs a TorchTrainer, and its Ray Train workers.

Each Tune trial runs Ray's Train V2 pattern: a small driver function (``run_trial``) builds a
``ray.train.torch.TorchTrainer`` with the trial's workers, and each worker (``train_worker``)
runs the very ``Trainer`` that ``seltrain train`` runs (``distributed.setup()`` joins Ray
Train's process group). Every epoch, the workers report the epoch's metrics with a checkpoint
(the run's ``checkpoints/`` folder) to Ray Train, and ``TuneReportCallback`` forwards them,
with the checkpoint's path, to Tune, where ASHA may stop the trial.

Lost nodes (spot reclaims): Ray Train's FailureConfig restarts a trial's workers from its last
checkpoint, Tune's max_failures restarts the trial itself (see ``run_trial``); both retry
``max_failures`` times. A restarted worker takes over the run-folder lock of the attempt before
it (``seltrain.runlock`` knows the Ray trial and attempt from ``ray_attempt_env``).

The driver and the workers receive typed objects (``Config``, ``TrialSettings``,
``StorageToken``), which Ray pickles; Ray is imported inside the functions that run on its
processes, so importing this module does not import Ray.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import uuid
from dataclasses import dataclass
from functools import partial

from seltrain.config import Config
from seltrain.errors import ConfigError
from seltrain.raysession import STORAGE_TOKEN, StorageNotSharedError  # noqa: F401
from seltrain.raysession import StorageToken as SharedToken
from seltrain.runlock import RAY_ATTEMPT_ENV, RAY_TRIAL_ENV
from seltrain.tuning.recipe import (SEED_KEY, SearchRecipe, trial_config, trial_dirname,
                                    trial_params)
from seltrain.tuning.resources import ResourcesConfig, scaling_config

# The driver writes a fresh token into the trial folders' root before the trials start; every
# Ray Train worker reads it back on its own node before training, so trial folders on a path
# the worker nodes do not share fail at the first trial's start with one line, not at the end
# (or never, with every node writing its own copy).
class StorageToken(SharedToken):
    @classmethod
    def write(cls, recipe: SearchRecipe) -> "StorageToken | None":
        """Write a fresh token into the trial folders' root for the workers to read back;
        None when that root is node-local by design (s3:// without trials_dir)."""
        if recipe.is_uri and not recipe.trials_dir:
            return None
        return cls.write_into(recipe.trial_root)


@dataclass
class TrialSettings:
    """What every trial of a search shares, handed to the driver function by Tune."""
    keys: list[str]  # the searched keys and the seed: the trial's name and its hparams
    trial_root: str
    train_storage: str  # Ray Train's copy of each trial's latest checkpoint
    resources: ResourcesConfig
    max_failures: int
    storage: StorageToken | None = None

    @classmethod
    def of(cls, recipe: SearchRecipe, storage: StorageToken | None = None) -> "TrialSettings":
        # exp_dir never ends in "/", so this joins an s3:// URI the same way as a path.
        train_storage = os.path.join(recipe.exp_dir, "ray_train")
        return cls(keys=recipe.keys, trial_root=recipe.trial_root, train_storage=train_storage,
                   resources=recipe.resources, max_failures=recipe.max_failures,
                   storage=storage)


# --------------------------------------------------------------------------- the worker

def _checkpoint_epoch(path: str) -> int | None:
    """The epoch a seltrain checkpoint file was written after; None if it is unreadable."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 - missing, torn or foreign: treat as absent
        return None


def ray_attempt_env(run_dir: str) -> dict[str, str]:
    """What tells the run-folder lock (seltrain.runlock) this worker's Ray trial and attempt.

    torchrun exports its job id and restart count to its workers; Ray Train exports nothing of
    the kind, so the worker says it: the trial is the search's Ray job and the trial's folder,
    the attempt is this worker (an actor: a restart is a new one). Ray Train stops a trial's
    workers before it starts the next attempt's, and a Tune retry starts after the trial's
    driver, and with it its workers, is gone: a lock of the same trial from another attempt
    belongs to a process that is stopped, or stopping, on a node that may be lost."""
    import ray

    rt = ray.get_runtime_context()
    return {RAY_TRIAL_ENV: f"{rt.get_job_id()}/{os.path.basename(run_dir)}",
            RAY_ATTEMPT_ENV: rt.get_actor_id() or uuid.uuid4().hex}


def train_worker(loop_config: dict) -> None:
    """One Ray Train worker: the same Trainer as ``seltrain train``, reporting every epoch.

    ``loop_config``: ``config`` (the trial's Config), ``run_dir``, ``keys`` (its hparams),
    ``storage`` (a StorageToken or None). On a restart (a lost node or worker, under Ray
    Train's FailureConfig, or a Tune retry) the trial continues from the newer of two copies
    of its last checkpoint: the run folder's ``checkpoints/last.pt`` (written before each
    report, so it may be one epoch ahead of what Ray Train recorded) and Ray Train's copy (the
    only one when trial folders sit on node-local disk, as with s3:// storage, and the trial
    moved to another node).
    """
    import ray.train

    from seltrain import distributed
    from seltrain.trainer import Trainer

    cfg: Config = loop_config["config"]
    run_dir: str = loop_config["run_dir"]
    storage: StorageToken | None = loop_config["storage"]
    if storage is not None:
        storage.check()
    os.environ.update(ray_attempt_env(run_dir))
    ctx = distributed.setup()  # joins the gloo/NCCL group Ray Train made
    last = os.path.join(run_dir, "checkpoints", "last.pt")
    restored = ray.train.get_checkpoint()
    resumed_after = _checkpoint_epoch(last) if ctx.is_main else None  # None: no last.pt
    if restored is not None and ctx.is_main:
        with restored.as_directory() as d:
            theirs = _checkpoint_epoch(os.path.join(d, "last.pt"))
            if theirs is not None and (resumed_after is None or theirs > resumed_after):
                shutil.copytree(d, os.path.dirname(last), dirs_exist_ok=True)
                resumed_after = theirs
    distributed.barrier()
    first = True

    def report(record: dict, ckpt_path: str) -> None:
        nonlocal first
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float)) or v is None}
        metrics = {k: (float("nan") if v is None else v) for k, v in metrics.items()}
        metrics["epochs_done"] = record["epoch"] + 1
        if first and resumed_after is not None:
            metrics["resumed_after_epoch"] = resumed_after + 1  # the console says so, once
        first = False
        ckpt = None
        if ctx.is_main:
            ckpt = ray.train.Checkpoint.from_directory(os.path.dirname(ckpt_path))
        ray.train.report(metrics, checkpoint=ckpt)

    # resume=True: a restarted or restored trial continues from its own last.pt.
    trainer = Trainer(cfg, ctx, run_dir=run_dir, resume=True, report=report,
                      hparam_keys=loop_config["keys"])
    summary = trainer.fit()
    if first:
        # Nothing trained, so nothing reported: the checkpoint was already the last epoch's (the
        # search was stopped between the last report and summary.json, as
        # tests/integration_tests/test_tune_resume.py does). Tune still needs the trial's
        # metrics.
        ray.train.report(summary_metrics(summary))
    distributed.teardown(ctx)


def summary_metrics(summary: dict) -> dict:
    """What Tune gets for a trial that had nothing left to train: its summary's numbers."""
    return {"val_acc": float("nan") if summary["val_acc"] is None else summary["val_acc"],
            "test_acc": summary["test_acc"], "test_si": summary["test_si"],
            "epochs_done": summary["epochs"], "already_done": True}


# --------------------------------------------------------------------------- the driver

def run_trial(config: dict, base: Config, settings: TrialSettings) -> None:
    """One Tune trial (the Train V2 "driver" function): a TorchTrainer over its workers.

    ``config`` is Tune's: this trial's values of the searched keys (dotted) and its seed.
    Two layers of retries, both from the recipe's ``max_failures``: Ray Train's FailureConfig
    restarts the trial's workers (on other nodes when theirs were lost, e.g. a spot reclaim)
    from the last checkpoint without Tune noticing; Tune's restarts this function itself when
    the node holding it is lost, or when Ray Train gives up.
    """
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    params = trial_params(config, settings.keys)
    name = trial_dirname(params, tune.get_context().get_trial_id())
    run_dir = os.path.join(settings.trial_root, name)
    cfg = trial_config(base, params)
    summary = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary):
        # Finished before the driver was interrupted: report its result, train nothing.
        with open(summary) as f:
            tune.report(summary_metrics(json.load(f)))
        return
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": cfg, "run_dir": run_dir, "keys": settings.keys,
                           "storage": settings.storage},
        scaling_config=scaling_config(settings.resources),
        run_config=ray.train.RunConfig(
            # Same name on a restart: Train V2 restores the run's latest checkpoint.
            name=name, storage_path=settings.train_storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            callbacks=[TuneReportCallback()]))
    trainer.fit()


# --------------------------------------------------------------------------- what Tune runs

def signed_loguniform(lo: float, hi: float, _spec=None) -> float:
    """A random sign times a log-uniform magnitude in [lo, hi], to 4 significant digits."""
    mag = math.exp(random.uniform(math.log(lo), math.log(hi)))
    return float(f"{random.choice((-1, 1)) * mag:.4g}")


def param_space(recipe: SearchRecipe) -> dict:
    """The recipe's space in Tune's terms: grids, distributions, and the seeds as a grid."""
    from ray import tune

    space = {}
    for key, s in recipe.space.items():
        k = s.kind()
        if s.values() is not None:
            space[key] = tune.grid_search(s.values())
        elif k == "choice":
            space[key] = tune.choice(s.choice)
        elif k == "uniform":
            space[key] = tune.uniform(*s.uniform)
        elif k == "loguniform":
            space[key] = tune.loguniform(*s.loguniform)
        else:
            space[key] = tune.sample_from(partial(signed_loguniform, *s.signed_loguniform))
    space[SEED_KEY] = tune.grid_search(list(recipe.seeds))
    return space


def trainable(recipe: SearchRecipe, base: Config, storage: StorageToken | None = None):
    """``run_trial`` with the base Config and the search's settings, as a Tune trainable."""
    from ray import tune

    fn = tune.with_parameters(run_trial, base=base, settings=TrialSettings.of(recipe, storage))
    # The driver only waits on its TorchTrainer; the workers hold the CPUs and GPUs. Tune
    # refuses an all-zero request, so the driver asks for a token 1 MiB of Ray's "memory".
    return tune.with_resources(fn, {"CPU": 0, "memory": 2 ** 20})
