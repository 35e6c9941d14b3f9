"""The run-folder lock (seltrain.runlock): exclusive, named when busy, stale ones taken over.

Real files, real processes: a lock held by another live process, a dead pid, a lock from
"another host" whose heartbeat is old or fresh, torchrun's restart of the same job, and 6
processes racing for one lock.
"""
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

import pytest

from seltrain import runlock
from seltrain.errors import ConfigError
from seltrain.runlock import RunLock


def _lock(path, notes=None):
    return RunLock(str(path), what="run folder X", fix="set another run.name",
                   say=(notes.append if notes is not None else None))


def _plant(path, **info):
    base = {"host": socket.gethostname(), "pid": 1, "start": None, "started": time.time(),
            "job": None, "attempt": 0, "token": "planted"}
    base.update(info)
    path.write_text(json.dumps(base))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_holder_is_refused_with_the_holder_named_and_release_frees_it(tmp_path):
    path = tmp_path / ".seltrain.lock"
    first = _lock(path).acquire()
    info = json.loads(path.read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    with pytest.raises(ConfigError, match=rf"run folder X is in use by pid {os.getpid()} on "
                       rf"{socket.gethostname()} .*set another run.name"):
        _lock(path).acquire()
    first.release()
    assert not path.exists()
    _lock(path).acquire().release()


def test_lock_of_a_live_process_on_this_host_is_refused(tmp_path):
    path = tmp_path / ".seltrain.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _plant(path, pid=sleeper.pid, start=runlock._proc_start(sleeper.pid))
        with pytest.raises(ConfigError, match=f"in use by pid {sleeper.pid}"):
            _lock(path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its process is gone now: the same file is a stale lock.
    notes = []
    _lock(path, notes).acquire().release()
    assert len(notes) == 1 and f"pid {sleeper.pid}" in notes[0] and "no longer running" in notes[0]


def test_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    # Our own (live) pid, but with another start time: the number was reused.
    path = tmp_path / ".seltrain.lock"
    _plant(path, pid=os.getpid(), start="1")
    notes = []
    _lock(path, notes).acquire().release()
    assert "no longer running" in notes[0]


def test_other_host_lock_is_stale_only_when_its_heartbeat_is_old(tmp_path):
    path = tmp_path / ".seltrain.lock"
    _plant(path, host="node-that-is-not-here", pid=4242)
    with pytest.raises(ConfigError, match="in use by pid 4242 on node-that-is-not-here"):
        _lock(path).acquire()
    old = time.time() - runlock.STALE_S - 30
    os.utime(path, (old, old))
    notes = []
    _lock(path, notes).acquire().release()
    assert "no heartbeat for" in notes[0] and "node-that-is-not-here" in notes[0]


def test_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    path = tmp_path / ".seltrain.lock"
    lock = _lock(path).acquire()
    try:
        old = time.time() - 1000
        os.utime(path, (old, old))
        deadline = time.time() + 10
        while os.path.getmtime(path) < time.time() - 100 and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.getmtime(path) > time.time() - 100
    finally:
        lock.release()


def test_elastic_restart_takes_over_its_own_earlier_attempt(tmp_path, monkeypatch):
    path = tmp_path / ".seltrain.lock"
    _plant(path, host="node-a", pid=99, job="job-7", attempt=0)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    notes = []
    _lock(path, notes).acquire().release()
    assert "attempt 0 of this job job-7" in notes[0]
    # Another job, or the same attempt, is not taken over.
    _plant(path, host="node-a", pid=99, job="job-8", attempt=0)
    with pytest.raises(ConfigError, match="in use by pid 99 on node-a"):
        _lock(path).acquire()
    _plant(path, host="node-a", pid=99, job="job-7", attempt=1)
    with pytest.raises(ConfigError, match="in use"):
        _lock(path).acquire()


def test_ray_trial_restart_takes_over_its_own_earlier_attempt(tmp_path, monkeypatch):
    """A Ray Train worker restarted on another node: the lost worker's lock, on a host whose
    heartbeat is still fresh, is taken over at once because it is the same Ray trial."""
    path = tmp_path / ".seltrain.lock"
    trial = "02000000/alpha-1_seed0_b1c2d_00001"
    _plant(path, host="node-a", pid=99, launcher="ray", job=trial, attempt="actor-a")
    monkeypatch.setenv(runlock.RAY_TRIAL_ENV, trial)
    monkeypatch.setenv(runlock.RAY_ATTEMPT_ENV, "actor-b")
    notes = []
    lock = _lock(path, notes).acquire()
    info = json.loads(path.read_text())
    assert (info["launcher"], info["job"], info["attempt"]) == ("ray", trial, "actor-b")
    lock.release()
    assert len(notes) == 1 and "pid 99 on node-a" in notes[0]
    assert f"an earlier attempt of this Ray trial {trial}" in notes[0]
    # The same attempt, another trial (or the same trial of another search: another Ray job),
    # or a torchrun job of the same name is live.
    for planted in ({"launcher": "ray", "job": trial, "attempt": "actor-b"},
                    {"launcher": "ray", "job": "02000000/alpha0_seed0_b1c2d_00000",
                     "attempt": "actor-a"},
                    {"launcher": "ray", "job": "03000000/alpha-1_seed0_b1c2d_00001",
                     "attempt": "actor-a"},
                    {"job": trial, "attempt": 0}):
        _plant(path, host="node-a", pid=99, **planted)
        with pytest.raises(ConfigError, match="in use by pid 99 on node-a"):
            _lock(path).acquire()


def test_empty_lock_file_is_stale_after_a_few_seconds(tmp_path):
    path = tmp_path / ".seltrain.lock"
    path.write_text("")
    with pytest.raises(ConfigError, match="in use"):
        _lock(path).acquire()
    old = time.time() - 60
    os.utime(path, (old, old))
    notes = []
    _lock(path, notes).acquire().release()
    assert "empty lock file" in notes[0]


def _contend(path, start, results):
    start.wait()
    try:
        lock = RunLock(path, what="X", fix="f", say=lambda m: None).acquire()
        results.put("won")
        time.sleep(1.0)  # hold it while the others try
        lock.release()
    except ConfigError:
        results.put("refused")


def test_racing_processes_one_wins(tmp_path):
    path = str(tmp_path / ".seltrain.lock")
    ctx = mp.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(path, start, results)) for _ in range(6)]
    for p in procs:
        p.start()
    start.set()
    outcome = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert outcome == ["refused"] * 5 + ["won"]
    assert not os.path.exists(path)


# --------------------------------------------------------------------------- RunFolder

def _folder(path, resume=False, restart_count=0):
    from seltrain.distributed import DistContext

    return runlock.RunFolder(str(path), DistContext(restart_count=restart_count), resume=resume)


def test_run_folder_claim_locks_and_release_frees(tmp_path):
    run = tmp_path / "out" / "r"  # made on the way
    with _folder(run).claim() as folder:
        assert (run / runlock.LOCK_NAME).is_file()
        with pytest.raises(ConfigError, match=r"run folder .*r is in use by pid \d+ .*set "
                                              r"another run\.name"):
            _folder(run).claim()
        assert folder.lock is not None
    assert not (run / runlock.LOCK_NAME).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"cannot create the run folder .*file/r: .*file is "
                                          r"a file, not a folder"):
        _folder(tmp_path / "file" / "r").claim()


def test_run_folder_refuses_to_overwrite_an_earlier_run(tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(ConfigError, match=r"already holds metrics\.jsonl from an earlier run"):
        _folder(run).claim()
    (run / "checkpoints" / "last.pt").write_bytes(b"pt")
    with pytest.raises(ConfigError, match=r"already holds .*checkpoints/last\.pt; pass "
                                          r"--resume"):
        _folder(run).claim()
    assert not (run / runlock.LOCK_NAME).exists()  # a refusal leaves no lock behind
    _folder(run, resume=True).claim().release()
    _folder(run, restart_count=1).claim().release()  # a restarted attempt resumes


def test_run_folder_resumes_without_last_pt_only_before_the_first_checkpoint(tmp_path):
    from seltrain.errors import CheckpointError

    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')  # epoch 1 ended, no last.pt yet
    _folder(run, resume=True).claim().release()
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n')
    with pytest.raises(CheckpointError, match=r"holds metrics\.jsonl but no "
                                              r"checkpoints/last\.pt to continue from"):
        _folder(run, resume=True).claim()
    # a kept epoch's copy (run.keep_epochs) means an epoch was checkpointed too
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "epoch_000.pt").write_bytes(b"pt")
    with pytest.raises(CheckpointError, match=r"holds checkpoints/epoch_000\.pt, metrics\.jsonl "
                                              r"but no checkpoints/last\.pt to continue from"):
        _folder(run, resume=True).claim()


def test_run_folder_claim_removes_killed_writers_temporaries(tmp_path, capsys):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    dead = _dead_pid()
    (run / "checkpoints" / f".last.pt.tmp-{dead}-0a0a0a0a").write_bytes(b"torn")
    (run / f".summary.json.tmp-{dead}-0b0b0b0b").write_text("{")
    _folder(run).claim().release()
    assert os.listdir(run / "checkpoints") == []
    assert os.listdir(run) == ["checkpoints"]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"seltrain: removed .last.pt.tmp-{dead}-0a0a0a0a, left in {run}/checkpoints "
                   "by an interrupted write",
                   f"seltrain: removed .summary.json.tmp-{dead}-0b0b0b0b, left in {run} by an "
                   "interrupted write"]
