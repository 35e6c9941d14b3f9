"""The tests' fault injection (seltrain.fault_injection): the SELTRAIN_TEST_KILL_AT_STEP hook
kills rank 1 at that step on the first attempt only, and the trainer carries it only when the
variable is set. The elastic-restart tests use it end to end (test_distributed_elastic.py,
test_deepspeed_launcher.py)."""
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from helpers import REPO
from seltrain.fault_injection import KILL_AT_STEP_ENV, step_hooks_from_env


def test_no_variable_no_hook(monkeypatch):
    monkeypatch.delenv(KILL_AT_STEP_ENV, raising=False)
    assert step_hooks_from_env(SimpleNamespace(rank=1, restart_count=0)) == []


def test_the_hook_spares_other_ranks_other_steps_and_restarted_attempts(monkeypatch):
    monkeypatch.setenv(KILL_AT_STEP_ENV, "7")
    for rank, restart, step in ((0, 0, 7), (1, 0, 6), (1, 0, 8), (1, 1, 7), (2, 0, 7)):
        (hook,) = step_hooks_from_env(SimpleNamespace(rank=rank, restart_count=restart))
        hook(step)  # still alive


@pytest.mark.faults
def test_the_hook_sigkills_rank_1_at_its_step_on_the_first_attempt():
    code = ("from types import SimpleNamespace\n"
            "from seltrain.fault_injection import step_hooks_from_env\n"
            "(hook,) = step_hooks_from_env(SimpleNamespace(rank=1, restart_count=0))\n"
            "for step in range(10):\n"
            "    print(step, flush=True)\n"
            "    hook(step)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=REPO,
                                            **{KILL_AT_STEP_ENV: "3"}))
    assert r.returncode == -signal.SIGKILL
    assert r.stdout.split() == ["0", "1", "2", "3"]  # killed right after step 3


def test_the_trainer_registers_the_hook_only_when_asked(monkeypatch, tmp_path):
    from seltrain.config import load_config
    from seltrain.trainer import Trainer

    cfg = load_config(None, ["data.synthetic.train_size=32", "data.synthetic.test_size=8",
                             "data.synthetic.image_size=8", "data.val_size=0",
                             "train.batch_size=8", f"run.out_dir={tmp_path}"])
    monkeypatch.delenv(KILL_AT_STEP_ENV, raising=False)
    assert Trainer(cfg).step_hooks == []
    monkeypatch.setenv(KILL_AT_STEP_ENV, "5")
    hooks = Trainer(cfg).step_hooks
    assert [h.__name__ for h in hooks] == ["kill_at_step"]
