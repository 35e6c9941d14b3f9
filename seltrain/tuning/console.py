"""What ``seltrain tune`` prints while a search runs: one line per trial event, and a table.

Ray's own console is off unless ``--verbose`` (seltrain.tuning.session, and ``quiet_ray``
below): Tune's status tables and result dumps, Ray Train's worker logs, the raylet's warnings.
``Console``, a Tune callback on the driver, prints from what the trials report instead:

    alpha-1_seed0_b1c2d_00001  started
    alpha-1_seed0_b1c2d_00001  epoch 2/3  loss 1.0272  val_acc 0.7500  test_acc 0.7383  ...
    alpha-1_seed0_b1c2d_00001  finished: best val_acc 0.7500 (epoch 2), test_acc 0.7383, ...
    alpha10_seed0_b1c2d_00003  stopped by ASHA after epoch 1: best val_acc 0.2250

Every epoch line once (only rank 0 reports), named by the trial's folder under trials/, whose
name starts with the trial's searched values and seed. Lost workers or nodes, restarts from a
checkpoint and failures each get one line; every ``STATUS_EVERY_S`` seconds in which something
happened, a table of all trials with their best val_acc and the test accuracy and SI at that
epoch. A trial error that no retry can fix (storage the worker nodes do not share) is
``fatal``: ``StopOnFatal`` ends the search and the CLI prints it as its one-line error.
"""
from __future__ import annotations

import math
import re
import sys
import time

from ray import tune

from seltrain.config import Config
# Ray's console kept quiet: shared with the analyses' fan-out.
from seltrain.raysession import UNACTIONABLE as _UNACTIONABLE  # noqa: F401
from seltrain.raysession import quiet_ray  # noqa: F401
from seltrain.tuning.recipe import SearchRecipe, enumerate_trials, trial_name
from seltrain.tuning.trials import StorageNotSharedError

STATUS_EVERY_S = 120.0
# Errors that fail every trial the same way: stop the search at the first one. Tune hands
# the callback a trial's error as the text of its traceback (the trial's error file).
_FATAL = re.compile(rf"{StorageNotSharedError.__name__}: (.*)")
# The last line of a trial's traceback that names an exception: "pkg.Error: message".
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit)): (.+)$")

_ACTIVE: list = []  # the console of this process's search (see Console.__reduce__)


def _active():
    return _ACTIVE[0]


def _num(v, fmt: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def error_summary(text: str) -> str:
    """One line from a trial's error trace: the innermost ``SomeError: message``."""
    lines = [ln.strip() for ln in (text or "").splitlines()]
    hits = [m for m in map(_ERROR_LINE.match, lines) if m]
    if hits:
        return f"{hits[-1].group(1)}: {hits[-1].group(2)}"[:300]
    return next((ln for ln in reversed(lines) if ln), "unknown error")[:300]


class Console(tune.Callback):
    def __init__(self, recipe: SearchRecipe, base: Config, *, verbose: bool = False,
                 out=None):
        self.recipe = recipe
        self.keys = recipe.keys
        self.epochs = base.train.epochs
        self.verbose = verbose
        self.out = out  # None: whatever sys.stdout is when a line is printed
        self.fatal: str | None = None
        self.trials: dict[str, dict] = {}  # trial id -> what the console knows of it
        self.t0 = time.time()
        self.last_table = time.time()
        self.changed = False
        _ACTIVE[:] = [self]

    def __reduce__(self):
        # Tune pickles its callbacks into the experiment state; `--resume` unpickles them.
        # Unpickled in a later process, this stands for that process's own console.
        return (_active, ())

    # ------------------------------------------------------------------ printing
    def say(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def header(self, exp_dir: str, address: str | None) -> None:
        r = self.recipe
        trials = enumerate_trials(r)
        space = ", ".join(f"{k} {s.describe()}" for k, s in r.space.items())
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        sch = (f"ASHA (grace {r.scheduler.grace_period}, factor {r.scheduler.reduction_factor})"
               if r.scheduler.type == "asha" else "no early stopping")
        self.say(f"search {r.name}: {len(trials)} trials ({space} x seeds {r.seeds}), "
                 f"{self.epochs} epochs each, {sch}, {r.max_concurrent_trials} at a time on "
                 f"{where}")
        self.say(f"experiment folder {exp_dir}" + ("" if self.verbose else
                 "  (Ray's own logs: --verbose)"))

    def _state(self, trial) -> dict:
        st = self.trials.get(trial.trial_id)
        if st is None:
            name = trial_name(trial.config, self.keys, trial.trial_id)
            epochs = trial.config.get("train.epochs", self.epochs)
            # A resumed search starts with the trials it had: finished, stopped or failed.
            done = int((trial.last_result or {}).get("epochs_done", 0) or 0)
            status = {"TERMINATED": "finished" if done >= epochs else "stopped",
                      "ERROR": "failed", "RUNNING": "running"}.get(trial.status, "pending")
            st = self.trials[trial.trial_id] = {"name": name, "status": status,
                                                "epochs": epochs, "done": done, "best": None,
                                                "starts": 0}
        return st

    def _line(self, trial, text: str) -> None:
        self.say(f"{self._state(trial)['name']}  {text}")
        self.changed = True

    # ------------------------------------------------------------------ Tune's events
    def on_trial_start(self, iteration, trials, trial, **info):
        st = self._state(trial)
        st["starts"] += 1
        st["status"] = "running"
        self._line(trial, "started" if st["starts"] == 1 else
                   "restarted (its last checkpoint is loaded)")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        st = self._state(trial)
        if result.get("already_done"):
            st["done"] = result.get("epochs_done", st["epochs"])
            st["best"] = result
            self._line(trial, "finished before the interruption; kept")
            return
        if "epoch" not in result:
            return
        if result.get("resumed_after_epoch"):
            self._line(trial, f"continued from its checkpoint after epoch "
                       f"{int(result['resumed_after_epoch'])}")
        st["done"] = int(result["epoch"]) + 1
        key = "val_acc" if not math.isnan(result.get("val_acc", math.nan)) else "test_acc"
        best = st["best"]
        if best is None or result.get(key, -1) > best.get(key, -1):
            st["best"] = {k: result.get(k) for k in ("val_acc", "test_acc", "test_si")}
            st["best"]["epoch"] = st["done"]
            st["best"]["key"] = key
        self._line(trial, f"epoch {st['done']}/{st['epochs']}  loss "
                   f"{_num(result.get('train_loss'))}  val_acc {_num(result.get('val_acc'))}  "
                   f"test_acc {_num(result.get('test_acc'))}  test_si "
                   f"{_num(result.get('test_si'))}  "
                   f"{_num(result.get('images_per_s'), '.0f')} img/s")

    def on_trial_complete(self, iteration, trials, trial, **info):
        st = self._state(trial)
        b = st["best"] or {}
        if st["done"] < st["epochs"]:
            st["status"] = "stopped"
            self._line(trial, f"stopped by ASHA after epoch {st['done']}: best "
                       f"{b.get('key', 'val_acc')} {_num(b.get(b.get('key', 'val_acc')))}")
            return
        st["status"] = "finished"
        if b.get("epoch") is None:
            return
        self._line(trial, f"finished: best {b['key']} {_num(b.get(b['key']))} (epoch "
                   f"{b['epoch']}), test_acc {_num(b.get('test_acc'))}, test_si "
                   f"{_num(b.get('test_si'))}")

    def _error(self, trial) -> str:
        # Tune has just appended this failure to the trial's error file on the driver (the
        # copy in storage is written later); the last "Failure #" block is this one.
        try:
            with open(trial.error_file) as f:
                text = f.read().rsplit("Failure # ", 1)[-1]
        except (OSError, TypeError):
            text = ""
        fatal = _FATAL.search(text)
        if fatal and self.fatal is None:
            self.fatal = fatal.group(1).strip()
        return error_summary(text)

    def on_trial_recover(self, iteration, trials, trial, **info):
        st = self._state(trial)
        st["status"] = "pending"
        failures = trial.run_metadata.num_failures
        self._line(trial, f"lost ({self._error(trial)}); retry {failures} of "
                   f"{self.recipe.max_failures} from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        st = self._state(trial)
        st["status"] = "failed"
        self._line(trial, f"failed: {self._error(trial)} (full trace: {trial.error_file})")

    def on_step_end(self, iteration, trials, **info):
        for t in trials:  # pending trials have a folder name before they start
            self._state(t)
        if self.changed and time.time() - self.last_table >= STATUS_EVERY_S:
            self.status_table()

    # ------------------------------------------------------------------ the table
    def status_table(self) -> None:
        self.last_table, self.changed = time.time(), False
        rows = sorted(self.trials.values(), key=lambda s: s["name"])
        counts = {}
        for s in rows:
            counts[s["status"]] = counts.get(s["status"], 0) + 1
        width = max(len(s["name"]) for s in rows)
        elapsed = time.time() - self.t0
        self.say(f"-- {int(elapsed // 60)} min {int(elapsed % 60):02d} s: "
                 + ", ".join(f"{n} {k}" for k, n in counts.items()))
        self.say(f"   {'trial':<{width}}  {'status':<8}  epochs  best val_acc  test_acc  test_si")
        for s in rows:
            b = s["best"] or {}
            self.say(f"   {s['name']:<{width}}  {s['status']:<8}  {s['done']:>2}/{s['epochs']:<3}  "
                     f"{_num(b.get('val_acc')):>12}  {_num(b.get('test_acc')):>8}  "
                     f"{_num(b.get('test_si')):>7}")

    def summary_line(self, n_trials: int, n_failed: int) -> str:
        count = {k: sum(1 for s in self.trials.values() if s["status"] == k)
                 for k in ("finished", "stopped")}
        return (f"{n_trials} trials: {count['finished']} finished, {count['stopped']} stopped "
                f"early, {n_failed} failed")


class StopOnFatal(tune.Stopper):
    """Ends the whole search once the console has seen an error no retry can fix."""

    def __init__(self, console: Console):
        self.console = console

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.console.fatal is not None
