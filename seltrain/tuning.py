"""Alpha searches with Ray Tune: search recipes in tune/, one TorchTrainer per trial.

    seltrain tune --search alpha [--set train.epochs=30] [--dry-run] [--resume] [--verbose]
                  [--address auto] [--num-cpus N] [--num-gpus N] [--storage DIR] [--name NAME]
    seltrain report EXPERIMENT_DIR

A search recipe (``tune/*.yaml``) names a base training recipe, the space (grid values or
sampled distributions over any ``section.key`` of the training recipe), the seeds, the metric,
the scheduler (ASHA or none), the resources of one trial, and where results go. It is parsed
with the same strictness as training recipes (``seltrain.config``): an unknown key, an empty
space or a trial larger than the machine (or than every node type of the cluster) is one line
and exit code 2.

Each Tune trial runs Ray's Train V2 pattern: a small driver function builds a
``ray.train.torch.TorchTrainer`` with the trial's workers, and each worker runs the very
``Trainer`` that ``seltrain train`` runs (``distributed.setup()`` joins Ray Train's process
group). Every epoch, the workers report the epoch's metrics with a checkpoint (the run's
``checkpoints/`` folder) to Ray Train, and ``TuneReportCallback`` forwards them, with the
checkpoint's path, to Tune, where ASHA may stop the trial.

Freeing a stopped trial's workers is Ray Train's job: its placement-group cleaner sees the
trial's controller die and removes the workers' placement group. It asks the State API, so
the local Ray starts its dashboard (127.0.0.1, a free port) and a cluster must run one
(``ray[default]``); seltrain refuses to start a search without it (``_check_state_api``).

Lost nodes (spot reclaims): Ray Train's FailureConfig restarts a trial's workers from its last
checkpoint, Tune's max_failures restarts the trial itself (see ``_trial``); both retry
``max_failures`` times. The console is seltrain's (``seltrain.search_console``); Ray's own
chatter appears with ``--verbose``.

Experiment layout (``<storage>/<name>/``)::

    trials/<alpha..._seed..._id>/   one seltrain run folder per trial: tb/, metrics.jsonl,
                                    summary.json, config.yaml, checkpoints/{last,best}.pt
    ray_train/<same name>/          Ray Train's copy of each trial's latest checkpoint
    tb_sweep/                       the sweep figures as TensorBoard images
    plots/*.png, results.csv, results_by_alpha.csv
    <Tune's own experiment state>   what ``--resume`` restores

``tensorboard --logdir <storage>/<name>`` shows every trial side by side; the HParams tab lists
every trial from its first epoch (stopped and failed ones too) with the searched keys, the seed
and trainer.HPARAM_KEYS, against the best val accuracy so far, the test accuracy and SI of
that epoch, and the epochs run.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Optional, Union

from seltrain.config import (build_dataclass, choice, config_from_dict, load_config, read_yaml,
                             set_dotted)
from seltrain.errors import ConfigError, did_you_mean

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_recipes")
# Tune's auto-added loggers would write a second set of TensorBoard events into each Tune
# trial folder; seltrain's own (one run folder per trial, with hparams) is the one to read.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


# --------------------------------------------------------------------------- the recipe

@dataclass
class LogGrid:
    """``num`` log-spaced magnitudes in [min, max], with both signs (and 0 when ``zero``)."""
    min: float = 0.1
    max: float = 100.0
    num: int = 4
    zero: bool = True
    signs: str = choice("both", ("both", "negative", "positive"))


@dataclass
class SpaceSpec:
    """Exactly one of these per searched key. ``grid``/``signed_log`` enumerate values;
    the rest are sampled ``num_samples`` times per seed."""
    grid: Optional[list[Union[float, int, str, bool]]] = None
    signed_log: Optional[LogGrid] = None
    choice: Optional[list[Union[float, int, str, bool]]] = None
    uniform: Optional[list[float]] = None
    loguniform: Optional[list[float]] = None
    # A random sign times a log-uniform magnitude in [lo, hi]: both signs of alpha.
    signed_loguniform: Optional[list[float]] = None

    def kind(self) -> str:
        return next(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def values(self) -> list | None:
        """The enumerated values, or None for a sampled distribution."""
        if self.grid is not None:
            return list(self.grid)
        if self.signed_log is not None:
            g = self.signed_log
            mags = ([g.min] if g.num == 1 else
                    [g.min * (g.max / g.min) ** (i / (g.num - 1)) for i in range(g.num)])
            mags = [float(f"{m:.3g}") for m in mags]  # -31.6227... reads better as -31.6
            neg = [-m for m in reversed(mags)] if g.signs in ("both", "negative") else []
            pos = mags if g.signs in ("both", "positive") else []
            return neg + ([0.0] if g.zero else []) + pos
        return None

    def describe(self) -> str:
        k = self.kind()
        vals = self.values()
        return f"{vals}" if vals is not None else f"{k}{tuple(getattr(self, k))}"


@dataclass
class SchedulerConfig:
    type: str = choice("none", ("none", "asha"))
    # ASHA (Li et al. 2020): rungs at grace_period * reduction_factor^k epochs; at each rung a
    # trial continues only if it is in the top 1/reduction_factor of the trials seen there.
    grace_period: int = 1
    reduction_factor: int = 2
    max_t: Optional[int] = None  # None = the base recipe's train.epochs


@dataclass
class ResourcesConfig:
    """One trial: ``workers`` Ray Train workers (DDP ranks), each with these CPUs and GPUs.

    A one-worker trial may take a fraction of a GPU (0.25: four CIFAR-sized trials share one
    GPU). A trial of several workers takes whole GPUs: its ranks talk over NCCL, which refuses
    two ranks on one device."""
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass
class SearchRecipe:
    base: str = "configs/quickstart.yaml"
    name: Optional[str] = None  # experiment folder name; None = the recipe's file name
    space: dict[str, SpaceSpec] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    num_samples: int = 1  # draws per seed when the space holds sampled distributions
    metric: str = "val_acc"
    mode: str = choice("max", ("max", "min"))
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_concurrent_trials: int = 2
    # A local folder, a shared (NFS) path every node mounts, or s3://bucket/prefix.
    storage: str = "runs/tune"
    # Where trial run folders (TensorBoard, metrics) go; None = <storage>/<name>/trials. Must be
    # a filesystem path: set it to an NFS mount when storage is s3://.
    trials_dir: Optional[str] = None
    max_failures: int = 1
    # key.sub=value overrides of the base recipe, applied before the command line's --set.
    overrides: list[str] = field(default_factory=list)
    path: str = ""  # resolved by load_search

    @property
    def is_uri(self) -> bool:
        return "://" in self.storage

    @property
    def exp_dir(self) -> str:
        return self.storage.rstrip("/") + "/" + self.name if self.is_uri else \
            os.path.join(self.storage, self.name)

    @property
    def trial_root(self) -> str:
        if self.trials_dir:
            return os.path.join(os.path.abspath(os.path.expanduser(self.trials_dir)), self.name)
        if self.is_uri:
            return os.path.join(os.path.expanduser("~/seltrain_trials"), self.name)
        return os.path.join(self.exp_dir, "trials")

    def sampled(self) -> bool:
        return any(s.values() is None for s in self.space.values())


_METRICS = ("val_acc", "test_acc", "test_si", "val_si", "train_loss", "train_ce")


def find_search(name: str) -> str:
    """``alpha`` -> tune/alpha.yaml from the current repo, else from the installed package."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        if not os.path.isfile(name):
            raise ConfigError(f"search recipe not found: {name}")
        return name
    for root in (os.getcwd(), REPO_ROOT, PACKAGE_RECIPES):
        path = os.path.join(root, "tune", f"{name}.yaml")
        if os.path.isfile(path):
            return path
    known = sorted({os.path.splitext(f)[0] for root in (os.getcwd(), PACKAGE_RECIPES)
                    if os.path.isdir(os.path.join(root, "tune"))
                    for f in os.listdir(os.path.join(root, "tune")) if f.endswith(".yaml")})
    raise ConfigError(f"no search recipe '{name}' in tune/{did_you_mean(name, known)}; known: "
                      f"{', '.join(known)}")


def _find_base(base: str, recipe_path: str) -> str:
    if os.path.isabs(base):
        return base
    recipe_dir = os.path.dirname(os.path.abspath(recipe_path))
    for root in (recipe_dir, os.path.dirname(recipe_dir), os.getcwd(), REPO_ROOT,
                 PACKAGE_RECIPES):
        path = os.path.normpath(os.path.join(root, base))
        if os.path.isfile(path):
            return path
    raise ConfigError(f"base recipe '{base}' of {recipe_path} not found (looked beside the "
                      "search recipe, in the repo and in the installed package)")


def load_search(name: str, overrides: list[str] | None = None, *, storage: str | None = None,
                exp_name: str | None = None) -> tuple[SearchRecipe, dict]:
    """(recipe, base training config as a dict) with every value checked."""
    path = find_search(name)
    data = read_yaml(path)
    where = f"in {path}"
    space = data.pop("space", None)
    recipe = build_dataclass(SearchRecipe, data, "", {}, where)
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"space is empty ({where}); give at least one key, e.g. "
                          "space: {selectivity.alpha: {grid: [-1, 0, 1]}}")
    for key, spec in space.items():
        if isinstance(spec, list):
            spec = {"grid": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"space.{key} must be a list of values or a mapping such as "
                              f"{{grid: [...]}}, got {spec!r} ({where})")
        spec = dict(spec)
        log_grid = spec.pop("signed_log", None)
        s = build_dataclass(SpaceSpec, spec, f"space.{key}.", {}, where)
        if log_grid is not None:  # the builder descends into non-Optional dataclasses only
            s.signed_log = build_dataclass(LogGrid, log_grid, f"space.{key}.signed_log.", {},
                                           where)
        set_ = [f.name for f in dataclasses.fields(s) if getattr(s, f.name) is not None]
        if len(set_) != 1:
            raise ConfigError(f"space.{key} must give exactly one of grid, signed_log, choice, "
                              f"uniform, loguniform, signed_loguniform; got "
                              f"{', '.join(set_) or 'none'} ({where})")
        vals = s.values()
        if vals is not None and not vals:
            raise ConfigError(f"space.{key} has no values ({where})")
        k = s.kind()
        if k in ("uniform", "loguniform", "signed_loguniform"):
            lo_hi = getattr(s, k)
            if len(lo_hi) != 2 or lo_hi[0] >= lo_hi[1] or (k != "uniform" and lo_hi[0] <= 0):
                raise ConfigError(f"space.{key}.{k} must be [low, high] with low < high"
                                  f"{' and low > 0' if k != 'uniform' else ''} ({where})")
        if k == "signed_log" and not (0 < s.signed_log.min <= s.signed_log.max
                                      and s.signed_log.num >= 1):
            raise ConfigError(f"space.{key}.signed_log needs 0 < min <= max and num >= 1 "
                              f"({where})")
        recipe.space[key] = s
    if not recipe.seeds:
        raise ConfigError(f"seeds is empty ({where}); give at least one seed")
    if recipe.metric not in _METRICS:
        raise ConfigError(f"unknown metric '{recipe.metric}' ({where})"
                          f"{did_you_mean(recipe.metric, _METRICS)}; choose one of: "
                          f"{', '.join(_METRICS)}")
    r = recipe.resources
    if r.workers < 1 or r.cpus_per_worker < 0 or r.gpus_per_worker < 0:
        raise ConfigError(f"resources need workers >= 1 and non-negative cpus/gpus ({where})")
    g = r.gpus_per_worker
    if g > 1 and g != int(g):
        raise ConfigError(f"resources.gpus_per_worker={g:g}: give a fraction below 1 (trials "
                          f"share a GPU) or a whole number ({where})")
    if r.workers > 1 and 0 < g < 1:
        raise ConfigError(f"resources.gpus_per_worker={g:g} with workers={r.workers} puts "
                          f"several NCCL ranks of one trial on one GPU, which fails; give each "
                          f"worker a whole GPU, or set workers: 1 to share GPUs between trials "
                          f"({where})")
    if recipe.max_concurrent_trials < 1 or recipe.max_failures < 0 or recipe.num_samples < 1:
        raise ConfigError(f"max_concurrent_trials and num_samples must be >= 1 and "
                          f"max_failures >= 0 ({where})")
    if "path" in data:
        raise ConfigError(f"unknown key 'path' ({where})")
    recipe.path = os.path.abspath(path)
    recipe.overrides = list(recipe.overrides) + list(overrides or [])
    recipe.name = exp_name or recipe.name or os.path.splitext(os.path.basename(path))[0]
    if storage:
        recipe.storage = storage
    if not recipe.is_uri:
        recipe.storage = os.path.abspath(os.path.expanduser(recipe.storage))
    base_path = _find_base(recipe.base, path)
    recipe.base = base_path
    base_cfg = load_config(base_path, recipe.overrides)
    base = base_cfg.to_dict()
    # Every searched key must be a key of the training recipe, and every value must pass
    # its checks: try the first (or a sampled-range end) value of each before Ray starts.
    for key, s in recipe.space.items():
        vals = s.values() or list(getattr(s, s.kind()))
        for v in vals[:1] + vals[-1:]:
            trial_config(base, {key: v}, where=f"space.{key} in {path}")
    if recipe.metric.startswith("test_") and base_cfg.train.eval_test == "at_best":
        raise ConfigError(f"metric {recipe.metric} needs the test split every epoch but the "
                          f"base recipe sets train.eval_test=at_best ({where}); rank by "
                          f"val_acc or set train.eval_test=every_epoch")
    sch = recipe.scheduler
    if sch.type == "asha":
        max_t = sch.max_t or base_cfg.train.epochs
        if not (1 <= sch.grace_period <= max_t) or sch.reduction_factor < 2:
            raise ConfigError(f"scheduler needs 1 <= grace_period <= max_t ({max_t}) and "
                              f"reduction_factor >= 2 ({where})")
    return recipe, base


def trial_config(base: dict, params: dict, where: str = "trial"):
    """The training Config of one trial: the base recipe with the trial's values set."""
    data = json.loads(json.dumps(base))
    for key, value in params.items():
        set_dotted(data, key, value, create=False, where=where)
    return config_from_dict(data, where=where)  # base values passed already: blame the space


def enumerate_trials(recipe: SearchRecipe) -> list[dict]:
    """The grid's trials in Tune's order; sampled keys show as their distribution."""
    keys = list(recipe.space)
    vals = [recipe.space[k].values() or [recipe.space[k].describe()] for k in keys]
    reps = recipe.num_samples if recipe.sampled() else 1
    out = []
    # Every combination of the grid values with every seed (Tune may run them in any order).
    for _ in range(reps):
        for combo in itertools.product(*vals, recipe.seeds):
            out.append({**dict(zip(keys, combo[:-1])), "train.seed": combo[-1]})
    return out


# --------------------------------------------------------------------------- resources

def check_resources(recipe: SearchRecipe, cpus: float, gpus: float, where: str) -> None:
    r = recipe.resources
    need_cpu, need_gpu = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    if need_cpu > cpus or need_gpu > gpus:
        raise ConfigError(
            f"one trial asks for {r.workers} worker(s) x ({r.cpus_per_worker:g} CPU, "
            f"{r.gpus_per_worker:g} GPU) = {need_cpu:g} CPU, {need_gpu:g} GPU but {where} has "
            f"{cpus:g} CPU, {gpus:g} GPU ({recipe.path}); lower resources.workers/"
            "cpus_per_worker/gpus_per_worker or allow more with --num-cpus/--num-gpus")


def local_resources(num_cpus: float | None, num_gpus: float | None) -> tuple[float, float]:
    have_cpu = os.cpu_count() or 1
    try:
        import torch
        have_gpu = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA runtime means no GPUs
        have_gpu = 0
    if num_cpus is not None and num_cpus > have_cpu:
        raise ConfigError(f"--num-cpus {num_cpus:g} is more than this machine's {have_cpu} CPUs")
    if num_gpus is not None and num_gpus > have_gpu:
        raise ConfigError(f"--num-gpus {num_gpus:g} is more than this machine's {have_gpu} GPUs")
    return (have_cpu if num_cpus is None else num_cpus,
            have_gpu if num_gpus is None else num_gpus)


def _autoscaler_node_types(gcs_address: str) -> dict | None:
    """{node type: resources} from the autoscaling config of the cluster at ``gcs_address``,
    read on its head node; None when the cluster has no autoscaler that seltrain can read.

    Ray keeps the node types only in the autoscaler's config file (``ray up`` writes it to
    ~/ray_bootstrap_config.yaml on the head; ``ray start --autoscaling-config`` names it) and
    reports placement groups that no node type can hold nowhere a driver can read (a trial
    just waits; ray-project/ray#18018, #20043), so a zero-CPU task on the head reads the file
    named on its monitor's command line.
    """
    import ray

    @ray.remote(num_cpus=0, resources={"node:__internal_head__": 0.001})
    def read_types(gcs: str):
        import psutil
        import yaml

        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if not any(c.endswith(os.path.join("autoscaler", "_private", "monitor.py")) or
                       c.endswith(os.path.join("autoscaler", "v2", "monitor.py")) for c in cmd):
                continue
            args = dict(c.split("=", 1) for c in cmd if c.startswith("--") and "=" in c)
            path = args.get("--autoscaling-config")
            if args.get("--gcs-address") != gcs or not path:
                continue
            with open(os.path.expanduser(path)) as f:
                config = yaml.safe_load(f)
            return {name: dict(t.get("resources") or {})
                    for name, t in (config.get("available_node_types") or {}).items()}
        return None

    try:
        types = ray.get(read_types.remote(gcs_address), timeout=60)
    except Exception:  # noqa: BLE001 - no head resource (Ray Client), psutil missing, unreadable
        return None
    # A type without resources leaves them to the provider (filled in at launch): unknown.
    return types if types and all(types.values()) else None


def check_cluster_resources(recipe: SearchRecipe, gcs_address: str) -> None:
    """Refuse a trial whose worker no node of the cluster can hold, now or after scaling.

    One worker's CPUs and GPUs must fit on one node (Ray Train places a worker on one node;
    several workers may spread). A node type of the autoscaling config or a node alive now
    that fits is enough; with neither known (no readable autoscaler) and no node fitting now,
    the trials wait for nodes and seltrain says so."""
    import ray

    r = recipe.resources
    need = {"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker}

    def fits(res: dict) -> bool:
        return all(res.get(k, 0) >= v for k, v in need.items() if v > 0)

    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    types = _autoscaler_node_types(gcs_address)
    if any(fits(res) for res in alive) or (types and any(fits(t) for t in types.values())):
        return
    want = f"{r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU"
    if types is not None:
        offer = "; ".join(f"{name}: {t.get('CPU', 0):g} CPU, {t.get('GPU', 0):g} GPU"
                          for name, t in types.items())
        raise ConfigError(f"one worker of a trial asks for {want} but no node type of the "
                          f"cluster offers that ({offer}) ({recipe.path}); lower "
                          "resources.cpus_per_worker/gpus_per_worker, or add a node type")
    print(f"seltrain: no node of the cluster offers one trial worker's {want} now; its trials "
          "wait until the cluster grows", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- a trial

def _trial_dirname(params: dict, trial_id: str) -> str:
    parts = []
    for key, v in params.items():
        short = key.rsplit(".", 1)[-1]
        parts.append(f"{short}{v:g}" if isinstance(v, float) else f"{short}{v}")
    return "_".join(parts + [trial_id]).replace("/", "-")


def _trial_params(config: dict, keys: list[str]) -> dict:
    return {k: config[k] for k in keys if k in config}


def trial_name(config: dict, keys: list[str], trial_id: str) -> str:
    """The trial's folder name under trials/ (``alpha-1_seed0_<id>``); the console uses it
    too, so what it prints names a folder."""
    return _trial_dirname(_trial_params(config, keys), trial_id)


def _tune_trial_name(keys: list[str], trial) -> str:
    return trial_name(trial.config, keys, trial.trial_id)


# The driver writes a fresh token here before the trials start; every Ray Train worker reads
# it back on its own node before training, so trial folders on a path the worker nodes do not
# share fail at the first trial's start with one line, not at the end (or never, with every
# node writing its own copy).
STORAGE_TOKEN = ".seltrain_storage_check"


class StorageNotSharedError(ConfigError):
    """A worker node cannot read the token the driver wrote into the trial folders' root."""


def _check_storage_shared(path: str, token: str) -> None:
    try:
        with open(path) as f:
            ok = f.read().strip() == token
    except OSError:
        ok = False
    if not ok:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        node = f"{ray.util.get_node_ip_address()}, node {node_id[-8:]}"
        raise StorageNotSharedError(
            f"the trial folders' root {os.path.dirname(path)} is not shared with the worker "
            f"nodes: {node} cannot read {os.path.basename(path)}, which the driver wrote "
            "there; put storage (or trials_dir) on a folder every node mounts (NFS), or use "
            "s3:// storage, then continue with --resume")


def _checkpoint_epoch(path: str) -> int | None:
    """The epoch a seltrain checkpoint file was written after; None if it is unreadable."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 - missing, torn or foreign: treat as absent
        return None


def _train_worker(loop_config: dict) -> None:
    """One Ray Train worker: the same Trainer as ``seltrain train``, reporting every epoch.

    On a restart (a lost node or worker, under Ray Train's FailureConfig, or a Tune retry)
    the trial continues from the newer of two copies of its last checkpoint: the run folder's
    ``checkpoints/last.pt`` (written before each report, so it may be one epoch ahead of what
    Ray Train recorded) and Ray Train's copy (the only one when trial folders sit on
    node-local disk, as with s3:// storage, and the trial moved to another node).
    """
    import ray.train

    from seltrain import distributed
    from seltrain.trainer import Trainer

    check = loop_config.get("storage_check")
    if check is not None:
        _check_storage_shared(check["path"], check["token"])
    cfg = config_from_dict(loop_config["config"])
    run_dir = loop_config["run_dir"]
    ctx = distributed.setup()  # joins the gloo/NCCL group Ray Train made
    last = os.path.join(run_dir, "checkpoints", "last.pt")
    restored = ray.train.get_checkpoint()
    if restored is not None and ctx.is_main:
        with restored.as_directory() as d:
            ours = _checkpoint_epoch(last) if os.path.exists(last) else None
            theirs = _checkpoint_epoch(os.path.join(d, "last.pt"))
            if theirs is not None and (ours is None or theirs > ours):
                shutil.copytree(d, os.path.dirname(last), dirs_exist_ok=True)
    resumed_after = _checkpoint_epoch(last) if ctx.is_main and os.path.exists(last) else None
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
                      hparam_keys=loop_config.get("hparam_keys"))
    _fit_when_unlocked(trainer)
    distributed.teardown(ctx)


def _fit_when_unlocked(trainer) -> None:
    """``trainer.fit()``, waiting while the run folder's lock is held by another host.

    A trial restarted after its node was lost runs on another node, and the lost worker's
    lock (seltrain.runlock) names a host whose heartbeat stops only with the node: the lock
    counts as stale after STALE_S. Failing at once would spend a retry of ``max_failures``
    per attempt, all within seconds; waiting for the lock to go stale costs at most that long.
    """
    import socket

    from seltrain.runlock import LOCK_NAME, STALE_S

    deadline = time.time() + STALE_S + 60
    while True:
        try:
            return trainer.fit()
        except ConfigError as e:
            held = LOCK_NAME in str(e) and " is in use by pid " in str(e) \
                and f" on {socket.gethostname()} " not in str(e)
            if not held or time.time() > deadline:
                raise
            if trainer.ctx.is_main:
                print(f"seltrain: waiting for the lock of a lost worker to go stale: {e}",
                      file=sys.stderr, flush=True)
            time.sleep(15)


def _scaling_config(r: dict):
    """Ray Train's ScalingConfig for one trial's workers (``r``: ResourcesConfig as a dict)."""
    import ray.train

    gpus = r["gpus_per_worker"]
    return ray.train.ScalingConfig(
        num_workers=r["workers"], use_gpu=gpus > 0,
        resources_per_worker={"CPU": r["cpus_per_worker"], **({"GPU": gpus} if gpus else {})})


def _trial(config: dict, base: dict, settings: dict) -> None:
    """One Tune trial (the Train V2 "driver" function): a TorchTrainer over its workers.

    Two layers of retries, both from the recipe's ``max_failures``: Ray Train's FailureConfig
    restarts the trial's workers (on other nodes when theirs were lost, e.g. a spot reclaim)
    from the last checkpoint without Tune noticing; Tune's restarts this function itself when
    the node holding it is lost, or when Ray Train gives up.
    """
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    ctx = tune.get_context()
    params = _trial_params(config, settings["keys"])
    name = _trial_dirname(params, ctx.get_trial_id())
    run_dir = os.path.join(settings["trial_root"], name)
    cfg = trial_config(base, params)
    summary = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary):
        # Finished before the driver was interrupted: report its result, train nothing.
        with open(summary) as f:
            s = json.load(f)
        tune.report({"val_acc": s["val_acc"] if s["val_acc"] is not None else float("nan"),
                     "test_acc": s["test_acc"], "test_si": s["test_si"],
                     "epochs_done": s["epochs"], "already_done": True})
        return
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": cfg.to_dict(), "run_dir": run_dir,
                           "storage_check": settings["storage_check"],
                           "hparam_keys": settings["hparam_keys"]},
        scaling_config=_scaling_config(settings["resources"]),
        run_config=ray.train.RunConfig(
            # Same name on a restart: Train V2 restores the run's latest checkpoint.
            name=name, storage_path=settings["train_storage"],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=settings["max_failures"]),
            callbacks=[TuneReportCallback()]))
    trainer.fit()


# --------------------------------------------------------------------------- the driver

def _signed_loguniform(lo: float, hi: float, _spec=None) -> float:
    import random

    mag = math.exp(random.uniform(math.log(lo), math.log(hi)))
    return float(f"{random.choice((-1, 1)) * mag:.4g}")


def _param_space(recipe: SearchRecipe) -> dict:
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
            space[key] = tune.sample_from(partial(_signed_loguniform, *s.signed_loguniform))
    space["train.seed"] = tune.grid_search(list(recipe.seeds))
    return space


def _settings(recipe: SearchRecipe, storage_check: dict | None = None) -> dict:
    train_storage = (recipe.exp_dir + "/ray_train") if recipe.is_uri else \
        os.path.join(recipe.exp_dir, "ray_train")
    keys = list(recipe.space) + ["train.seed"]
    return {"keys": keys, "hparam_keys": keys, "trial_root": recipe.trial_root,
            "train_storage": train_storage, "resources": dataclasses.asdict(recipe.resources),
            "max_failures": recipe.max_failures, "storage_check": storage_check}


def _trainable(recipe: SearchRecipe, base: dict, storage_check: dict | None = None):
    from ray import tune

    fn = tune.with_parameters(_trial, base=base, settings=_settings(recipe, storage_check))
    # The driver only waits on its TorchTrainer; the workers hold the CPUs and GPUs. Tune
    # refuses an all-zero request, so the driver asks for a token 1 MiB of Ray's "memory".
    return tune.with_resources(fn, {"CPU": 0, "memory": 2 ** 20})


def print_plan(recipe: SearchRecipe, base: dict, out=sys.stdout) -> None:
    trials = enumerate_trials(recipe)
    r = recipe.resources
    epochs = base["train"]["epochs"]
    print(f"search {recipe.path}\nbase   {recipe.base}"
          f"{' with ' + ' '.join(recipe.overrides) if recipe.overrides else ''}", file=out)
    print(f"experiment {recipe.exp_dir}  (trial folders: {recipe.trial_root})", file=out)
    sch = recipe.scheduler
    print(f"metric {recipe.metric} ({recipe.mode}); scheduler "
          + (f"asha(grace_period={sch.grace_period}, reduction_factor={sch.reduction_factor}, "
             f"max_t={sch.max_t or epochs})" if sch.type == "asha" else "none")
          + f"; max_failures {recipe.max_failures}", file=out)
    print(f"per trial: {r.workers} worker(s) x {r.cpus_per_worker:g} CPU, "
          f"{r.gpus_per_worker:g} GPU = {r.workers * r.cpus_per_worker:g} CPU, "
          f"{r.workers * r.gpus_per_worker:g} GPU; at most {recipe.max_concurrent_trials} "
          f"concurrent = {recipe.max_concurrent_trials * r.workers * r.cpus_per_worker:g} CPU, "
          f"{recipe.max_concurrent_trials * r.workers * r.gpus_per_worker:g} GPU", file=out)
    print(f"{len(trials)} trials x {epochs} epochs = {len(trials) * epochs} trial-epochs at most"
          f"{' (sampled keys drawn per trial)' if recipe.sampled() else ''}:", file=out)
    keys = list(trials[0])
    print("  #    " + "  ".join(f"{k:>18}" for k in keys), file=out)
    for i, t in enumerate(trials):
        print(f"  {i:<4} " + "  ".join(f"{str(t[k]):>18}" for k in keys), file=out)


# ray.init(address=...) on an address where no Ray answers retries for minutes; the CLI gives
# up after this long with one line (seconds for a refused host:port, see _probe_gcs).
CONNECT_TIMEOUT_S = 60.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe_gcs(address: str) -> None:
    """A ``host:port`` with nothing listening is a one-line error now, not a minutes-long
    retry inside ray.init; ``auto`` and ``ray://`` are left to Ray (and the watchdog)."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise ConfigError(f"no Ray cluster answers at --address {address} "
                          f"({getattr(e, 'strerror', None) or e}); start one (ray up CONFIG, or "
                          "ray start --head) or fix the address; without --address the search "
                          "runs on a local Ray") from None


def _connect(address: str, verbose: bool) -> None:
    import threading

    import ray

    _probe_gcs(address)
    # Quiet: the driver's C++ core writes each failed GCS connect straight to stderr (file
    # descriptor 2, past Python's logging); while ray.init runs, fd 2 goes to /dev/null and
    # what the user reads is seltrain's one line. A Python error still surfaces, after it.
    stderr = os.dup(2)

    def give_up():
        os.write(stderr, f"seltrain: error: no Ray cluster answered at --address {address} "
                         f"within {CONNECT_TIMEOUT_S:.0f} s; start one (ray up CONFIG, or ray "
                         "start --head) or fix the address\n".encode())
        os._exit(2)  # ray.init is blocked in native code: nothing else can stop it

    watchdog = threading.Timer(CONNECT_TIMEOUT_S, give_up)
    watchdog.daemon = True
    watchdog.start()
    if not verbose:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
    try:
        ray.init(address=address, log_to_driver=verbose,
                 logging_level="INFO" if verbose else "ERROR")
    except ConnectionError as e:
        raise ConfigError(f"--address {address}: {str(e).splitlines()[0]} Start one (ray up "
                          "CONFIG, or ray start --head), or drop --address to run on a local "
                          "Ray") from None
    finally:
        watchdog.cancel()
        os.dup2(stderr, 2)
        os.close(stderr)


def _check_state_api(address: str) -> None:
    """Ray Train frees the workers of a trial that Tune stopped (ASHA) only through its
    placement-group cleaner, which asks the State API (the dashboard, ray[default]) whether
    the trial's controller is still alive. Without it every stopped trial keeps its CPUs and
    GPUs, and the search stalls once they are all held: refuse to start instead."""
    try:
        from ray.util.state import list_nodes

        list_nodes(address=address, limit=1, timeout=20, raise_on_missing_output=False)
    except Exception as e:  # noqa: BLE001 - missing package, no dashboard, or unreachable
        raise ConfigError(
            f"Ray's State API is not reachable ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''}); trials stopped early would "
            "keep their CPUs/GPUs. Install ray[default] (pip install 'seltrain[cluster]') and "
            "start the cluster with its dashboard") from None


def _init_ray(args, recipe: SearchRecipe) -> None:
    """Start (or join) Ray with its console quiet unless --verbose.

    Quiet means: worker and raylet output not forwarded (log_to_driver), Ray's loggers at
    ERROR, and Tune's own tables off (run_search); seltrain's console (search_console) prints
    what the trials report instead."""
    import ray

    verbose = bool(getattr(args, "verbose", False))
    if args.address:
        _connect(args.address, verbose)
        gcs = ray.get_runtime_context().gcs_address
        if not args.address.startswith("ray://"):
            _check_state_api(gcs)
        check_cluster_resources(recipe, gcs)
        return
    cpus, gpus = local_resources(args.num_cpus, args.num_gpus)
    check_resources(recipe, cpus, gpus, "this machine (as allowed)")
    tmp = os.environ.get("SELTRAIN_RAY_TMP", os.path.join("/tmp", f"seltrain_ray_{os.getuid()}"))
    port = _free_port()
    # Ray Train's placement-group cleaner (a Ray actor) calls the State API without an
    # address, so Ray finds one by scanning this machine for clusters, and with several here
    # fails or picks another's (ray-project/ray#25639, #36554); an actor it cannot find counts
    # as dead, so the cleaner would free a live trial's workers. The raylet, and every worker
    # it starts, inherits this variable, which points the State API at this cluster.
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=int(math.ceil(cpus)), num_gpus=int(gpus), include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=port, _temp_dir=tmp,
             log_to_driver=verbose, configure_logging=True,
             logging_level="INFO" if verbose else "ERROR")
    _check_state_api(os.environ["RAY_API_SERVER_ADDRESS"])


def _write_storage_token(recipe: SearchRecipe) -> dict | None:
    """Write a fresh token into the trial folders' root for the workers to read back (see
    STORAGE_TOKEN); None when that root is node-local by design (s3:// without trials_dir)."""
    import uuid

    if recipe.is_uri and not recipe.trials_dir:
        return None
    os.makedirs(recipe.trial_root, exist_ok=True)
    path = os.path.join(recipe.trial_root, STORAGE_TOKEN)
    token = uuid.uuid4().hex
    with open(path + ".tmp", "w") as f:
        f.write(token)
    os.replace(path + ".tmp", path)
    return {"path": path, "token": token}


def run_search(args) -> int:
    recipe, base = load_search(args.search, args.overrides, storage=args.storage,
                               exp_name=args.name)
    if args.dry_run:
        print_plan(recipe, base)
        if not args.address:
            cpus, gpus = local_resources(args.num_cpus, args.num_gpus)
            try:
                check_resources(recipe, cpus, gpus, "this machine (as allowed)")
            except ConfigError as e:  # a plan for a cluster is still worth reading here
                print(f"note: {e}; run it on a cluster with --address")
        return 0
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from seltrain.search_console import Console, StopOnFatal, quiet_ray

    exp_dir = recipe.exp_dir
    restorable = tune.Tuner.can_restore(exp_dir)
    if restorable and not args.resume:
        raise ConfigError(f"{exp_dir} already holds an experiment; pass --resume to continue it, "
                          "or --name to start a new one")
    if args.resume and not restorable:
        raise ConfigError(f"nothing to resume in {exp_dir}; run without --resume to start")
    verbose = bool(getattr(args, "verbose", False))
    _init_ray(args, recipe)
    if not recipe.is_uri:  # only now: a search that cannot start leaves no folders behind
        os.makedirs(exp_dir, exist_ok=True)
        os.makedirs(recipe.trial_root, exist_ok=True)
    trainable = _trainable(recipe, base, _write_storage_token(recipe))
    console = Console(recipe, base, verbose=verbose)
    # Tune's JSON/CSV results (for ResultGrid and --resume) but not its TensorBoard logger:
    # each trial's seltrain run folder carries the TensorBoard events.
    callbacks = [console, JsonLoggerCallback(), CSVLoggerCallback()]
    if args.resume:
        # Finished trials stay as they are; unfinished and errored ones continue from their
        # checkpoints (the driver resumes each run folder's last.pt). Tune restores its run
        # config (callbacks, stopper) from the experiment state; the console pickled there
        # unpickles as this process's console (Console.__reduce__).
        tuner = tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True,
                                   restart_errored=True, param_space=_param_space(recipe))
    else:
        sch = recipe.scheduler
        scheduler = None
        if sch.type == "asha":
            # time_attr = epochs the run has done, not Tune's report count, so a trial that
            # resumed mid-way sits on the right rung.
            scheduler = ASHAScheduler(time_attr="epochs_done",
                                      max_t=sch.max_t or base["train"]["epochs"],
                                      grace_period=sch.grace_period,
                                      reduction_factor=sch.reduction_factor)
        tuner = tune.Tuner(
            trainable, param_space=_param_space(recipe),
            tune_config=tune.TuneConfig(
                metric=recipe.metric, mode=recipe.mode, scheduler=scheduler,
                num_samples=recipe.num_samples if recipe.sampled() else 1,
                max_concurrent_trials=recipe.max_concurrent_trials,
                # A reused actor would keep its previous trial's TorchTrainer alive.
                reuse_actors=False,
                # Tune's own name for a trial (its tables with --verbose, its logs) is the
                # trial's run folder name; Tune's trial folders stay trial_<id>.
                trial_name_creator=partial(_tune_trial_name, list(recipe.space) + ["train.seed"]),
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=tune.RunConfig(
                name=recipe.name, storage_path=recipe.storage,
                failure_config=tune.FailureConfig(max_failures=recipe.max_failures),
                stop=StopOnFatal(console), callbacks=callbacks,
                verbose=1 if verbose else 0))
        _write_experiment_info(recipe, base)
    console.header(exp_dir, args.address)
    t0 = time.perf_counter()
    with quiet_ray(verbose):
        grid = tuner.fit()
    wall = time.perf_counter() - t0
    if console.fatal:
        raise ConfigError(console.fatal)
    n_failed = grid.num_errors
    unfinished = len(grid) - grid.num_terminated - n_failed
    if recipe.is_uri:
        print(f"results are in {exp_dir}; trial folders in {recipe.trial_root}")
        report_dir = recipe.trial_root
    else:
        report_dir = exp_dir
    from seltrain.report import report_experiment

    report_experiment(report_dir, metric=recipe.metric, mode=recipe.mode)
    print(f"\nsearch wall time {wall:.0f} s; {console.summary_line(len(grid), n_failed)}")
    print(f"TensorBoard (every trial, HParams tab, sweep figures): tensorboard --logdir "
          f"{report_dir}")
    if unfinished:
        print(f"seltrain: interrupted; continue with: seltrain tune --search {args.search} "
              f"--resume{' --name ' + args.name if args.name else ''}"
              f"{' --storage ' + args.storage if args.storage else ''}", file=sys.stderr)
        return 130
    return 1 if n_failed else 0


def _write_experiment_info(recipe: SearchRecipe, base: dict) -> None:
    if recipe.is_uri:
        return
    info = {"recipe": recipe.path, "base": recipe.base, "overrides": recipe.overrides,
            "metric": recipe.metric, "mode": recipe.mode, "trial_root": recipe.trial_root,
            "space": {k: s.describe() for k, s in recipe.space.items()},
            "seeds": recipe.seeds, "scheduler": dataclasses.asdict(recipe.scheduler),
            "epochs": base["train"]["epochs"]}
    with open(os.path.join(recipe.exp_dir, "seltrain_experiment.json"), "w") as f:
        json.dump(info, f, indent=2)


# --------------------------------------------------------------------------- the CLI

def register(subparsers) -> None:
    t = subparsers.add_parser("tune", help="search alpha (or any recipe key) with Ray Tune")
    t.add_argument("--search", required=True,
                   help="a search recipe name in tune/ (alpha, alpha_asha, quickstart) or a path")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the base training recipe, e.g. --set train.epochs=30 "
                        "(repeatable)")
    t.add_argument("--dry-run", action="store_true",
                   help="print the resolved trials and resources; start nothing")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted experiment (finished trials are kept)")
    t.add_argument("--address", default=None,
                   help="join a running Ray cluster (auto, or ray://host:10001); default: "
                        "start a local Ray")
    t.add_argument("--num-cpus", type=float, default=None,
                   help="local Ray: CPUs it may use (default: all of this machine's)")
    t.add_argument("--num-gpus", type=float, default=None,
                   help="local Ray: GPUs it may use (default: all of this machine's)")
    t.add_argument("--storage", default=None,
                   help="override the recipe's storage: a folder, an NFS path or s3://...")
    t.add_argument("--name", default=None, help="experiment name (default: the recipe's)")
    t.add_argument("--verbose", action="store_true",
                   help="also show Ray's own console: Tune's tables, Ray Train's and the "
                        "workers' logs, the raylet's warnings")
    t.set_defaults(func=run_search)
