"""Fault injection for the tests that kill a rank on purpose, and for nothing else.

``SELTRAIN_TEST_KILL_AT_STEP=N`` in a training process's environment: rank 1 SIGKILLs itself
right after the optimizer step of global step N, on the job's first attempt only
(``DistContext.restart_count == 0``), so that torchrun's ``--max-restarts`` restart, or a run
started again with ``--resume``, carries on past it. SIGKILL, because it skips every cleanup,
as a lost node or the OOM killer does. Used by tests/integration_tests/test_distributed_elastic.py
(torchrun) and test_deepspeed_launcher.py (the deepspeed launcher).

The trainer registers the hook in ``Trainer.step_hooks`` only when the variable is set, so the
step loop of a normal run carries no trace of it.
"""
from __future__ import annotations

import os
import signal
from typing import Callable

KILL_AT_STEP_ENV = "SELTRAIN_TEST_KILL_AT_STEP"
KILLED_RANK = 1


def step_hooks_from_env(ctx) -> list[Callable[[int], None]]:
    """The step hooks the environment asks for (``[]`` without ``SELTRAIN_TEST_KILL_AT_STEP``)."""
    raw = os.environ.get(KILL_AT_STEP_ENV)
    if raw is None:
        return []
    at = int(raw)

    def kill_at_step(global_step: int) -> None:
        if ctx.rank == KILLED_RANK and global_step == at and ctx.restart_count == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    return [kill_at_step]
