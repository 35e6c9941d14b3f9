"""Bad inputs and faults of ``seltrain tune`` that need a real Ray: the rows of
test_bad_inputs.py's table that start a search, in the same form (exit code, the one
``seltrain:`` line, no traceback, what must not be written).

One search serves both rows, to pay Ray's start-up once: while it runs, the same search
started again is refused by the experiment's lock; then a real Ctrl-C (SIGINT to the search's
process group, as a terminal sends it) stops it.
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO
from test_tune import _sets, epochs_logged, tune_env, write_recipe

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.faults, pytest.mark.slow]


def _sigint_as_a_terminal_gives_it() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # see test_bad_inputs.py


def _said(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith(("seltrain: error:",
                                                            "seltrain: interrupted"))]


def _wait(cond, proc, what, timeout=300):
    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the search ended (code {proc.returncode}) before {what}: "
                        f"{proc.communicate()[1][-3000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.2)


def test_second_search_refused_and_ctrl_c_writes_nothing_final(tmp_path):
    recipe = write_recipe(tmp_path, name="cut", space={"selectivity.alpha": {"grid": [0.0, -1.0]}},
                          max_concurrent_trials=1, max_failures=0)
    args = [sys.executable, "-m", "seltrain", "tune", "--search", recipe, "--num-cpus", "2",
            *_sets("train.epochs=4", "data.synthetic.train_size=1024")]
    env = tune_env(tmp_path)
    exp = tmp_path / "exp" / "cut"
    lock = tmp_path / "exp" / ".cut.lock"
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=_sigint_as_a_terminal_gives_it)
    try:
        # Row "experiment_lock_live": the same search again while the first runs.
        _wait(lock.exists, first, "the experiment's lock")
        t0 = time.time()
        second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        assert time.time() - t0 < 60  # refused before it starts a Ray of its own
        (line,) = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert re.search(rf"seltrain: error: experiment .*/exp/cut is in use by pid "
                         rf"{first.pid} on .*lock file .*/exp/\.cut\.lock\); wait for that "
                         "search to end, or pass --name", line), line

        # Row "tune_ctrl_c": Ctrl-C once the first trial has checkpointed an epoch.
        def one_epoch():
            trials = exp / "trials"
            return trials.is_dir() and any(epochs_logged(str(trials / d))
                                           for d in os.listdir(trials))
        _wait(one_epoch, first, "a trial's first epoch")
        os.killpg(first.pid, signal.SIGINT)
        out, err = first.communicate(timeout=180)
    except BaseException:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
        raise
    assert first.returncode == 130, (first.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    (said,) = _said(err)
    assert re.fullmatch(
        r"seltrain: interrupted: the search was stopped with [12] trial\(s\) unfinished; their "
        r"checkpoints and the experiment state are kept in .*/exp/cut and no results were "
        r"written as final; continue with: seltrain tune --search .*cut.yaml --resume", said), said
    # Nothing reported as final: no results, no plots, no best alpha.
    assert not (exp / "results.csv").exists() and not (exp / "plots").exists()
    assert "best alpha" not in out
    cut = json.loads((exp / "interrupted.json").read_text())["cut_trials"]
    assert cut and all(not (exp / "trials" / c / "summary.json").exists() for c in cut)

    # A report made now (by hand) counts the cut trials as unfinished, never stopped early.
    r = subprocess.run([sys.executable, "-m", "seltrain", "report", str(exp)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(exp / "results.csv") as f:
        rows = {row["trial"]: row for row in csv.DictReader(f)}
    for c in cut:
        if c in rows:
            assert rows[c]["stopped_early"] == "False" and rows[c]["complete"] == "False"
