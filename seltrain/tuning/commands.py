"""``seltrain tune``: run a search recipe on Ray Tune, one TorchTrainer per trial.

    seltrain tune --search alpha [--set train.epochs=30] [--seeds 0,1] [--grid KEY=V1,V2]
                  [--dry-run] [--resume] [--verbose]
                  [--address auto] [--num-cpus N] [--num-gpus N] [--storage DIR] [--name NAME]

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
that epoch, and the epochs run. The console is seltrain's (``seltrain.tuning.console``); Ray's
own chatter appears with ``--verbose``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import threading
import time
from functools import partial
from typing import Sequence

from seltrain.atomic import atomic_write
from seltrain.config import Config
from seltrain.errors import ConfigError, Interrupted
from seltrain.tuning.recipe import SearchRecipe, enumerate_trials, load_search, trial_name
from seltrain.tuning.resources import check_local_fit, local_resources
from seltrain.tuning.session import start_ray
from seltrain.tuning.trials import StorageToken, param_space, trainable

# Tune's auto-added loggers would write a second set of TensorBoard events into each Tune
# trial folder; seltrain's own (one run folder per trial, with hparams) is the one to read.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def run_search(search: str, *, overrides: Sequence[str] = (), dry_run: bool = False,
               resume: bool = False, address: str | None = None,
               num_cpus: float | None = None, num_gpus: float | None = None,
               storage: str | None = None, name: str | None = None,
               verbose: bool = False, seeds: str | None = None,
               grids: Sequence[str] = ()) -> int:
    """Run the search recipe ``search`` (a name in tune/ or a path) on Ray Tune; what
    ``seltrain tune`` does, callable in-process (``benchmarks/bench_asha.py``).

    ``overrides``: ``key=value`` changes to the base training recipe. ``dry_run``: print the
    trials and resources, start nothing. ``resume``: continue the experiment in
    ``<storage>/<name>``. ``address``: a running Ray cluster to join (``auto``,
    ``ray://host:10001``); without one a local Ray starts, limited to ``num_cpus`` and
    ``num_gpus`` (default: the machine's). ``storage``, ``name``: override the recipe's.
    ``verbose``: show Ray's own console too. ``seeds`` ("0,1"), ``grids`` (["KEY=V1,V2"]):
    replace the recipe's seeds and a searched key's values (``load_search``).

    Returns the exit status: 0 when every trial finished, 1 when one failed, 130 when some
    were left unfinished; a bad recipe or a refused start raises a ``SeltrainError``, a
    Ctrl-C ``Interrupted``, after saving what can be resumed."""
    recipe, base = load_search(search, list(overrides), storage=storage, exp_name=name,
                               seeds=seeds, grids=grids)
    if dry_run:
        print_plan(recipe, base)
        if not address:
            cpus, gpus = local_resources(num_cpus, num_gpus)
            try:
                check_local_fit(recipe.resources, cpus, gpus, "this machine (as allowed)",
                                recipe.path)
            except ConfigError as e:  # a plan for a cluster is still worth reading here
                print(f"note: {e}; run it on a cluster with --address")
        return 0
    again = resume_command(search, name=name, storage=storage, seeds=seeds, grids=grids)
    # One search per experiment: a second one started with the same recipe and name is
    # refused here, naming the first, before it starts Ray or touches the folder.
    lock = experiment_lock(recipe)
    try:
        return _run_locked(recipe, base, resume=resume, address=address, num_cpus=num_cpus,
                           num_gpus=num_gpus, verbose=verbose, again=again)
    finally:
        # The Ray started (or joined) for this search ends with it, so a caller can run the
        # next search in the same process.
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        lock.release()


def experiment_lock(recipe: SearchRecipe):
    """The experiment's lock (``seltrain.runlock``, as run folders are locked), beside its
    folder: ``<storage>/.<name>.lock``; for s3:// storage, beside the trial folders' root."""
    from seltrain.runlock import RunLock

    folder = os.path.dirname(recipe.trial_root) if recipe.is_uri else recipe.storage
    try:
        os.makedirs(folder, exist_ok=True)
        return RunLock(os.path.join(folder, f".{recipe.name}.lock"),
                       what=f"experiment {recipe.exp_dir}",
                       fix="wait for that search to end, or pass --name to start another "
                           "experiment").acquire()
    except OSError as e:
        raise ConfigError(f"cannot lock the experiment in {folder} ({e.strerror}); set storage "
                          "(or --storage) to a folder you can write") from None


INTERRUPTED_FILE = "interrupted.json"


def _run_locked(recipe: SearchRecipe, base: Config, *, resume: bool, address: str | None,
                num_cpus: float | None, num_gpus: float | None, verbose: bool,
                again: str) -> int:
    """The search, with the experiment locked; ``again``: the command that continues it."""
    import signal

    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from seltrain.tuning.console import Console, quiet_ray

    exp_dir = recipe.exp_dir
    restorable = tune.Tuner.can_restore(exp_dir)
    if restorable and not resume:
        raise ConfigError(f"{exp_dir} already holds an experiment; pass --resume to continue it, "
                          "or --name to start a new one")
    if resume and not restorable:
        raise ConfigError(f"nothing to resume in {exp_dir}; run without --resume to start")
    start_ray(recipe, address=address, num_cpus=num_cpus, num_gpus=num_gpus, verbose=verbose)
    if not recipe.is_uri:  # only now: a search that cannot start leaves no folders behind
        os.makedirs(exp_dir, exist_ok=True)
    fn = trainable(recipe, base, StorageToken.write(recipe))  # makes the trial folders' root
    console = Console(recipe, base, verbose=verbose)
    # Tune's JSON/CSV results (for ResultGrid and --resume) but not its TensorBoard logger:
    # each trial's seltrain run folder carries the TensorBoard events.
    callbacks = [console, JsonLoggerCallback(), CSVLoggerCallback()]
    if resume:
        # Finished trials stay as they are; unfinished and errored ones continue from their
        # checkpoints (the driver resumes each run folder's last.pt). Tune restores its run
        # config (callbacks, stopper) from the experiment state; the console pickled there
        # unpickles as this process's console (Console.__reduce__).
        tuner = tune.Tuner.restore(exp_dir, fn, resume_unfinished=True,
                                   restart_errored=True, param_space=param_space(recipe))
    else:
        tuner = _new_tuner(recipe, base, fn, console, callbacks, verbose)
        _write_experiment_info(recipe, base)
    console.header(exp_dir, address)
    t0 = time.perf_counter()
    # Ctrl-C: Tune's own SIGINT handler (installed by fit) saves the experiment state, stops
    # the trials and returns normally, with the cut trials looking ended. It puts back the
    # handler it found when it catches a SIGINT, so finding ours in place afterwards means the
    # search was interrupted. Ours raises KeyboardInterrupt, as Python's default: a second
    # Ctrl-C (or a Tune told to leave SIGINT alone) ends the search at once.
    def on_sigint(signum, frame):
        raise KeyboardInterrupt

    ours = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if ours else None
    try:
        with quiet_ray(verbose):
            grid = tuner.fit()
        interrupted = ours and signal.getsignal(signal.SIGINT) is on_sigint \
            and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") or 0)
    except KeyboardInterrupt:
        grid, interrupted = None, True
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)
    wall = time.perf_counter() - t0
    if console.fatal:
        raise ConfigError(console.fatal)
    if interrupted:
        _interrupted(recipe, console, again)
    return _finish(recipe, console, grid, wall, again)


def resume_command(search: str, *, name: str | None = None, storage: str | None = None,
                   seeds: str | None = None, grids: Sequence[str] = ()) -> str:
    """The command line that continues this search (with the same trials: its --seeds and
    --grid too)."""
    import shlex

    return (f"seltrain tune --search {search} --resume"
            f"{' --name ' + name if name else ''}"
            f"{' --storage ' + storage if storage else ''}"
            f"{' --seeds ' + seeds if seeds else ''}"
            + "".join(f" --grid {shlex.quote(g)}" for g in grids))


def _interrupted(recipe: SearchRecipe, console, again: str) -> None:
    """Ctrl-C: nothing is reported as final (no results.csv, plots or best alpha), the trials
    cut short are listed in interrupted.json so that ``seltrain report`` never counts them as
    stopped early by the scheduler, and one line says how to continue."""
    report_dir = recipe.trial_root if recipe.is_uri else recipe.exp_dir
    stopped = {st["name"] for st in console.trials.values() if st["status"] == "stopped"}
    root = recipe.trial_root
    cut = sorted(n for n in (os.listdir(root) if os.path.isdir(root) else [])
                 if not n.startswith(".") and os.path.isdir(os.path.join(root, n))
                 and not os.path.exists(os.path.join(root, n, "summary.json"))
                 and n not in stopped)
    os.makedirs(report_dir, exist_ok=True)
    with atomic_write(os.path.join(report_dir, INTERRUPTED_FILE)) as f:
        json.dump({"cut_trials": cut, "time": time.time()}, f, indent=2)
    raise Interrupted(f"the search was stopped with {len(cut)} trial(s) unfinished; their "
                      f"checkpoints and the experiment state are kept in {recipe.exp_dir} and "
                      f"no results were written as final; continue with: {again}")


def _new_tuner(recipe: SearchRecipe, base: Config, fn, console, callbacks: list,
               verbose: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from seltrain.tuning.console import StopOnFatal

    sch = recipe.scheduler
    scheduler = None
    if sch.type == "asha":
        # time_attr = epochs the run has done, not Tune's report count, so a trial that
        # resumed mid-way sits on the right rung.
        scheduler = ASHAScheduler(time_attr="epochs_done", max_t=sch.max_t or base.train.epochs,
                                  grace_period=sch.grace_period,
                                  reduction_factor=sch.reduction_factor)
    return tune.Tuner(
        fn, param_space=param_space(recipe),
        tune_config=tune.TuneConfig(
            metric=recipe.metric, mode=recipe.mode, scheduler=scheduler,
            num_samples=recipe.samples_per_point,
            max_concurrent_trials=recipe.max_concurrent_trials,
            # A reused actor would keep its previous trial's TorchTrainer alive.
            reuse_actors=False,
            # Tune's own name for a trial (its tables with --verbose, its logs) is the
            # trial's run folder name; Tune's trial folders stay trial_<id>.
            trial_name_creator=partial(_tune_trial_name, recipe.keys),
            trial_dirname_creator=_tune_trial_dirname),
        run_config=tune.RunConfig(
            name=recipe.name, storage_path=recipe.storage,
            failure_config=tune.FailureConfig(max_failures=recipe.max_failures),
            stop=StopOnFatal(console), callbacks=callbacks,
            verbose=1 if verbose else 0))


def _tune_trial_name(keys: list[str], trial) -> str:
    return trial_name(trial.config, keys, trial.trial_id)


def _tune_trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _finish(recipe: SearchRecipe, console, grid, wall: float, again: str) -> int:
    """The report, the summary line, and the exit code: 130 interrupted, 1 a trial failed."""
    from seltrain.report import report_experiment

    n_failed = grid.num_errors
    unfinished = len(grid) - grid.num_terminated - n_failed
    if recipe.is_uri:
        print(f"results are in {recipe.exp_dir}; trial folders in {recipe.trial_root}")
        report_dir = recipe.trial_root
    else:
        report_dir = recipe.exp_dir
    if not unfinished:  # every cut trial ran on: nothing is unfinished any more
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(report_dir, INTERRUPTED_FILE))
    report_experiment(report_dir, metric=recipe.metric, mode=recipe.mode)
    print(f"\nsearch wall time {wall:.0f} s; {console.summary_line(len(grid), n_failed)}")
    print(f"TensorBoard (every trial, HParams tab, sweep figures): tensorboard --logdir "
          f"{report_dir}")
    if unfinished:
        print(f"seltrain: interrupted; continue with: {again}", file=sys.stderr)
        return 130
    return 1 if n_failed else 0


def _write_experiment_info(recipe: SearchRecipe, base: Config) -> None:
    if recipe.is_uri:
        return
    info = {"recipe": recipe.path, "base": recipe.base, "overrides": recipe.overrides,
            "metric": recipe.metric, "mode": recipe.mode, "trial_root": recipe.trial_root,
            "space": {k: s.describe() for k, s in recipe.space.items()},
            "seeds": recipe.seeds, "scheduler": dataclasses.asdict(recipe.scheduler),
            "epochs": base.train.epochs}
    with atomic_write(os.path.join(recipe.exp_dir, "seltrain_experiment.json")) as f:
        json.dump(info, f, indent=2)


def print_plan(recipe: SearchRecipe, base: Config, out=None) -> None:
    """``--dry-run``: the resolved recipe, the resources, and every trial (to ``out``, or to
    sys.stdout as it is at the call: a caller that redirects it gets the plan)."""
    out = out or sys.stdout
    trials = enumerate_trials(recipe)
    r = recipe.resources
    epochs = base.train.epochs
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


# --------------------------------------------------------------------------- the CLI

def register(subparsers) -> None:
    t = subparsers.add_parser("tune", help="search alpha (or any recipe key) with Ray Tune")
    t.add_argument("--search", required=True,
                   help="a search recipe name in tune/ (alpha, alpha_asha, alpha_late, "
                        "bn_dropout, quickstart) or a path")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the base training recipe, e.g. --set train.epochs=30 "
                        "(repeatable)")
    t.add_argument("--seeds", default=None, metavar="S1,S2",
                   help="replace the recipe's seeds, e.g. --seeds 0 to try a recipe small first")
    t.add_argument("--grid", dest="grids", action="append", default=[], metavar="KEY=V1,V2",
                   help="replace a searched key's values by this grid, e.g. --grid "
                        "selectivity.alpha=0,-1 (repeatable; the key must be one the recipe "
                        "searches)")
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
    t.set_defaults(func=_tune)


def _tune(args) -> int:
    """``seltrain tune``: the command line mapped onto ``run_search``."""
    return run_search(args.search, overrides=args.overrides, dry_run=args.dry_run,
                      resume=args.resume, address=args.address, num_cpus=args.num_cpus,
                      num_gpus=args.num_gpus, storage=args.storage, name=args.name,
                      verbose=args.verbose, seeds=args.seeds, grids=args.grids)
