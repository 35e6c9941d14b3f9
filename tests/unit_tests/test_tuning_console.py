"""What ``seltrain tune`` prints (seltrain/tuning/console.py): the header, one line per trial
event (start, restart, epoch, stop by ASHA, finish, loss of a worker, failure), the status table
and the summary line, each string and number as printed; the innermost error of a trace; a
fatal error ending the search; Ray's unactionable raylet line dropped from the console.

The trials are Ray Tune's own ``Trial`` objects (stubs: no trainable is registered and no Ray
runs); the one property that needs a running Ray, the error file's path, points at a file here.
"""
from __future__ import annotations

import io
import logging
import os
import re
import sys
import time

import pytest
from ray.tune.experiment import Trial

from helpers import REPO
from seltrain.tuning import console as con
from seltrain.tuning.console import Console, StopOnFatal, error_summary, quiet_ray
from seltrain.tuning.recipe import load_search


class _Trial(Trial):
    """Ray's Trial, its error file a path of the test's (Ray computes it under its session)."""
    error_path: str | None = None

    @property
    def error_file(self):
        return self.error_path


@pytest.fixture
def search(tmp_path):
    recipe = tmp_path / "s.yaml"
    recipe.write_text(f"base: {REPO}/configs/synthetic.yaml\noverrides: [train.epochs=3]\n"
                      "space:\n  selectivity.alpha: {grid: [-1.0, 10.0]}\nseeds: [0, 1]\n"
                      "scheduler: {type: asha, grace_period: 1, reduction_factor: 2}\n"
                      "max_concurrent_trials: 2\nmax_failures: 2\n")
    return load_search(str(recipe), storage=str(tmp_path / "runs"))


def _console(search):
    out = io.StringIO()
    return Console(*search, out=out), out


def _trial(alpha, seed, n, status=Trial.PENDING, **kw) -> _Trial:
    t = _Trial("seltrain", config={"selectivity.alpha": alpha, "train.seed": seed},
               trial_id=f"b1c2d_{n:05d}", stub=True, **kw)
    t.set_status(status)
    return t


def _lines(out: io.StringIO) -> list[str]:
    lines = out.getvalue().splitlines()
    out.seek(0)
    out.truncate()
    return lines


def _result(epoch, val, test, si, loss=1.02724, rate=1523.4, **extra):
    return {"epoch": epoch, "val_acc": val, "test_acc": test, "test_si": si,
            "train_loss": loss, "images_per_s": rate, **extra}


def test_the_header_says_what_the_search_is(search, tmp_path):
    c, out = _console(search)
    c.header(str(tmp_path / "runs" / "s"), None)
    c.header("/shared/exp", "10.0.0.1:6379")
    assert _lines(out) == [
        "search s: 4 trials (selectivity.alpha [-1.0, 10.0] x seeds [0, 1]), 3 epochs each, "
        "ASHA (grace 1, factor 2), 2 at a time on a local Ray",
        f"experiment folder {tmp_path}/runs/s  (Ray's own logs: --verbose)",
        "search s: 4 trials (selectivity.alpha [-1.0, 10.0] x seeds [0, 1]), 3 epochs each, "
        "ASHA (grace 1, factor 2), 2 at a time on the Ray cluster at 10.0.0.1:6379",
        "experiment folder /shared/exp  (Ray's own logs: --verbose)"]


def test_a_trial_that_runs_to_the_end(search):
    c, out = _console(search)
    t = _trial(-1.0, 0, 1)
    c.on_trial_start(0, [t], t)
    c.on_trial_result(0, [t], t, _result(0, 0.5, 0.48, 0.31))
    c.on_trial_result(0, [t], t, _result(1, 0.75, 0.7383, 0.1234, loss=0.5))
    c.on_trial_result(0, [t], t, _result(2, 0.7, 0.75, 0.2, loss=None, rate=float("nan")))
    c.on_trial_result(0, [t], t, {"done": True})  # no epoch: nothing to say
    c.on_trial_complete(0, [t], t)
    name = "alpha-1_seed0_b1c2d_00001"
    assert _lines(out) == [
        f"{name}  started",
        f"{name}  epoch 1/3  loss 1.0272  val_acc 0.5000  test_acc 0.4800  test_si 0.3100  "
        "1523 img/s",
        f"{name}  epoch 2/3  loss 0.5000  val_acc 0.7500  test_acc 0.7383  test_si 0.1234  "
        "1523 img/s",
        f"{name}  epoch 3/3  loss -  val_acc 0.7000  test_acc 0.7500  test_si 0.2000  - img/s",
        # the best epoch by val_acc (2), not the last one
        f"{name}  finished: best val_acc 0.7500 (epoch 2), test_acc 0.7383, test_si 0.1234"]
    assert c.summary_line(1, 0) == "1 trials: 1 finished, 0 stopped early, 0 failed"


def test_without_a_validation_split_the_best_is_by_test_accuracy(search):
    c, out = _console(search)
    t = _trial(10.0, 1, 4)
    nan = float("nan")
    for epoch, test in enumerate((0.3, 0.6, 0.5)):
        c.on_trial_result(0, [t], t, _result(epoch, nan, test, 0.9))
    c.on_trial_complete(0, [t], t)
    assert _lines(out)[-1] == ("alpha10_seed1_b1c2d_00004  finished: best test_acc 0.6000 "
                               "(epoch 2), test_acc 0.6000, test_si 0.9000")


def test_asha_stops_restarts_and_resumes(search):
    c, out = _console(search)
    stopped, again = _trial(10.0, 0, 3), _trial(-1.0, 1, 2)
    c.on_trial_start(0, [], stopped)
    c.on_trial_result(0, [], stopped, _result(0, 0.225, 0.2, 0.5))
    c.on_trial_complete(0, [], stopped)
    c.on_trial_start(0, [], again)
    c.on_trial_start(0, [], again)
    c.on_trial_result(0, [], again, _result(2, 0.8, 0.79, 0.1, resumed_after_epoch=2))
    assert _lines(out)[2:] == [
        "alpha10_seed0_b1c2d_00003  stopped by ASHA after epoch 1: best val_acc 0.2250",
        "alpha-1_seed1_b1c2d_00002  started",
        "alpha-1_seed1_b1c2d_00002  restarted (its last checkpoint is loaded)",
        "alpha-1_seed1_b1c2d_00002  continued from its checkpoint after epoch 2",
        "alpha-1_seed1_b1c2d_00002  epoch 3/3  loss 1.0272  val_acc 0.8000  test_acc 0.7900  "
        "test_si 0.1000  1523 img/s"]
    done = _trial(-1.0, 0, 1)
    c.on_trial_result(0, [], done, {"already_done": True, "epochs_done": 3, "val_acc": 0.7})
    assert _lines(out) == ["alpha-1_seed0_b1c2d_00001  finished before the interruption; kept"]


def test_a_resumed_search_starts_with_what_its_trials_had(search):
    c, out = _console(search)
    finished = _trial(-1.0, 0, 1, Trial.TERMINATED)
    finished.update_last_result({"epochs_done": 3})  # what Tune restores of a trial
    cut = _trial(10.0, 0, 3, Trial.TERMINATED)
    cut.update_last_result({"epochs_done": 1})
    failed, running, pending = (_trial(-1.0, 1, 2, Trial.ERROR), _trial(10.0, 1, 4, Trial.RUNNING),
                                _trial(10.0, 2, 5))
    c.on_step_end(0, [finished, cut, failed, running, pending])
    assert [s["status"] for s in c.trials.values()] == ["finished", "stopped", "failed",
                                                        "running", "pending"]
    assert c.summary_line(5, 1) == "5 trials: 1 finished, 1 stopped early, 1 failed"
    assert _lines(out) == []  # nothing happened yet: no table


def test_the_status_table_every_few_minutes(search, monkeypatch):
    c, out = _console(search)
    a, b = _trial(-1.0, 0, 1), _trial(10.0, 0, 3)
    c.on_trial_result(0, [a, b], a, _result(0, 0.75, 0.7383, 0.1234))
    c.on_trial_result(0, [a, b], b, _result(0, float("nan"), 0.2, 0.5))
    c.on_trial_complete(0, [a, b], b)
    _lines(out)
    c.on_step_end(0, [a, b])
    assert _lines(out) == []  # within STATUS_EVERY_S of the start
    now = time.time()
    c.t0, c.last_table = now - 125.4, now - con.STATUS_EVERY_S
    c.on_step_end(0, [a, b])
    assert _lines(out) == [
        "-- 2 min 05 s: 1 pending, 1 stopped",
        "   trial                      status    epochs  best val_acc  test_acc  test_si",
        "   alpha-1_seed0_b1c2d_00001  pending    1/3          0.7500    0.7383   0.1234",
        "   alpha10_seed0_b1c2d_00003  stopped    1/3               -    0.2000   0.5000"]
    c.on_step_end(0, [a, b])
    assert _lines(out) == []  # nothing changed since the last table


def test_failures_are_one_line_and_a_fatal_one_ends_the_search(search, tmp_path):
    c, out = _console(search)
    t = _trial(-1.0, 0, 1)
    t.error_path = str(tmp_path / "error.txt")
    with open(t.error_path, "w") as f:
        f.write("Failure # 1 (occurred at 2026-01-01)\nTraceback (most recent call last):\n"
                "  File \"x.py\", line 1\nray.exceptions.RayTaskError(RuntimeError): oops\n"
                "RuntimeError: [../gloo/pair.cc:534] Connection closed by peer\n")
    t.run_metadata.num_failures = 1
    c.on_trial_recover(0, [t], t)
    assert _lines(out) == ["alpha-1_seed0_b1c2d_00001  lost (RuntimeError: [../gloo/pair.cc:534] "
                           "Connection closed by peer); retry 1 of 2 from its last checkpoint"]
    assert c.trials["b1c2d_00001"]["status"] == "pending"
    assert c.fatal is None and not StopOnFatal(c).stop_all()
    with open(t.error_path, "a") as f:
        f.write("Failure # 2\nTraceback (most recent call last):\n  File \"y.py\", line 2\n"
                "seltrain.tuning.trials.StorageNotSharedError: storage /local/runs is not "
                "shared by the worker nodes; pass --storage\n")
    c.on_trial_error(0, [t], t)
    assert _lines(out) == [f"alpha-1_seed0_b1c2d_00001  failed: StorageNotSharedError: storage "
                           f"/local/runs is not shared by the worker nodes; pass --storage "
                           f"(full trace: {t.error_path})"]
    assert c.fatal == "storage /local/runs is not shared by the worker nodes; pass --storage"
    assert StopOnFatal(c).stop_all() and not StopOnFatal(c)("b1c2d_00001", {})
    assert c.trials["b1c2d_00001"]["status"] == "failed"


def test_the_innermost_error_of_a_trace():
    trace = ("Traceback (most recent call last):\n  File \"a.py\"\nValueError: outer\n\n"
             "During handling ...\nray.exceptions.RayTaskError(ConfigError): ...\n"
             "seltrain.errors.ConfigError: train.lr must be > 0, got 0.0\n")
    assert error_summary(trace) == "ConfigError: train.lr must be > 0, got 0.0"
    assert error_summary("Killed\n\n") == "Killed"  # no exception line: the last line
    # a class named otherwise than *Error/*Exception/*Exit: the last line, whole
    assert error_summary("x\nseltrain.errors.PeerLost: rank 1 lost") == (
        "seltrain.errors.PeerLost: rank 1 lost")
    assert error_summary("") == error_summary(None) == "unknown error"
    assert error_summary("RuntimeError: " + "x" * 500) == ("RuntimeError: " + "x" * 500)[:300]


def test_quiet_ray_drops_the_raylet_line_and_puts_everything_back(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    tune_log = logging.getLogger("ray.tune")
    level = tune_log.level
    raylet = ("(raylet) WARNING: 48 worker processes have been started on node: abc with "
              "address: 10.0.0.1. This could be a result of ...")
    with quiet_ray(False):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
        assert tune_log.level == logging.CRITICAL
        print("trial a  started")
        print(raylet)
        print("trial a  epoch 1/3", end="")  # a line not ended yet
    assert sys.stdout is out and "RAY_AIR_NEW_OUTPUT" not in os.environ
    assert tune_log.level == level
    assert out.getvalue() == "trial a  started\ntrial a  epoch 1/3"
    with quiet_ray(True):  # --verbose: Ray's console as it is
        print(raylet)
    assert out.getvalue().endswith(raylet + "\n")
    assert re.search(con._UNACTIONABLE, raylet)
