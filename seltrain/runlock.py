"""One writer per run folder (or output file): an exclusive lock file with a heartbeat.

``RunLock(path, what=..., fix=...).acquire()`` creates ``path`` with ``O_CREAT | O_EXCL``, which
is atomic on local disks and on NFS (v3 and later), so it also keeps apart runs started on
different nodes that share ``run.out_dir``. The file holds who took it (host, pid, the pid's
start time, the launcher's job id and restart attempt) and a daemon thread touches it every
``HEARTBEAT_S`` seconds while the holder lives.

A lock left behind by a holder that died (SIGKILL, a lost node) is *stale* and is taken over,
with a note on stderr naming it, when
- its host is this host and its pid is gone (or is a newer process reusing the number), or
- its host is another host and its heartbeat is older than ``STALE_S``, measured against the
  file server's clock (a file created beside it), so clocks that disagree between nodes do not
  matter; ``STALE_S`` is well above NFS attribute caching (``acregmax`` 60 s by default), or
- it belongs to an earlier attempt of the same launcher job, so a restart never waits for its
  own dead rank 0 (on a lost node, the heartbeat would take ``STALE_S`` to stop counting):
  torchrun's elastic agent kills every worker of an attempt before it starts the next one
  (same ``TORCHELASTIC_RUN_ID``, higher ``TORCHELASTIC_RESTART_COUNT``); Ray Train stops a
  trial's workers before it starts the next attempt's, and a Tune retry starts after the
  trial's driver and its workers are gone (same ``SELTRAIN_RAY_TRIAL``, another
  ``SELTRAIN_RAY_ATTEMPT``: Ray exports nothing like torchrun's variables, so seltrain's Ray
  Train worker does, see ``seltrain.tuning.trials.ray_attempt_env``).
Otherwise the lock is live and acquiring it fails with one line naming the holder.

Taking a stale lock over renames it to a private name first (only one contender's rename can
succeed), checks that it really is the stale one (a racing contender may just have created a
fresh lock) and puts it back untouched if not.

``RunFolder(run_dir, ctx, resume=...).claim()`` is what a training run does with its folder
before anything else: rank 0 creates and locks it, refuses to overwrite an earlier run's
files (unless resuming), and removes the temporaries of killed writers; every rank learns the
outcome.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid

from seltrain.atomic import pid_running
from seltrain.errors import (CheckpointError, ConfigError, SeltrainError, file_in_the_way,
                             is_disk_full)

HEARTBEAT_S = 15.0
STALE_S = 120.0
LOCK_NAME = ".seltrain.lock"
# A Ray Train worker of a seltrain search: its trial (the search's Ray job and the trial's
# folder) and its attempt (an id that changes with every restart, unordered).
RAY_TRIAL_ENV = "SELTRAIN_RAY_TRIAL"
RAY_ATTEMPT_ENV = "SELTRAIN_RAY_ATTEMPT"


def launcher_attempt() -> tuple[str | None, str | None, int | str]:
    """(launcher, job, attempt) as the launcher exported them to this process: torchrun's
    (attempts numbered), a seltrain Ray trial's (attempts named), or (None, None, 0)."""
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        return ("torchrun", os.environ["TORCHELASTIC_RUN_ID"],
                int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0))
    if os.environ.get(RAY_TRIAL_ENV):
        return "ray", os.environ[RAY_TRIAL_ENV], os.environ.get(RAY_ATTEMPT_ENV, "")
    return None, None, 0


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs on this host (and is the process that started at ``start``)."""
    if not pid_running(pid):
        return False
    if start is not None:
        now = _proc_start(pid)
        if now is not None and now != start:
            return False
    return True


def _fs_now(folder: str) -> float:
    """The file server's 'now': the mtime of a file just created beside the lock."""
    probe = os.path.join(folder, f".seltrain.clock-{socket.gethostname()}-{os.getpid()}")
    try:
        with open(probe, "w") as f:
            return os.fstat(f.fileno()).st_mtime
    except OSError:
        return time.time()
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass


def _read(path: str) -> tuple[dict | None, float | None]:
    """(the lock's content, its mtime); open() revalidates NFS's cached attributes."""
    try:
        with open(path) as f:
            mtime = os.fstat(f.fileno()).st_mtime
            text = f.read()
    except FileNotFoundError:
        return None, None
    try:
        info = json.loads(text)
    except ValueError:
        info = {}  # being written this instant, or torn by a crash: judged by its age only
    return (info if isinstance(info, dict) else {}), mtime


class RunLock:
    """An exclusive lock file; ``acquire()`` returns self, ``release()`` removes the file."""

    def __init__(self, path: str, *, what: str, fix: str, say=None):
        self.path = os.path.abspath(path)
        self.what, self.fix = what, fix
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.token = uuid.uuid4().hex
        self.launcher, self.job, self.attempt = launcher_attempt()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- taking it
    def acquire(self) -> "RunLock":
        for _ in range(5):
            if self._create():
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name="seltrain-lock-heartbeat")
                self._thread.start()
                return self
            info, mtime = _read(self.path)
            if info is None:
                continue  # released between our try and our look: try again
            why = self._stale_reason(info, mtime)
            if why is None:
                raise ConfigError(self._busy(info, mtime))
            if self._take_over(info):
                self.say(f"seltrain: removed the stale lock {self.path} ({why})")
        raise ConfigError(f"could not lock {self.what} ({self.path}): other processes keep "
                          f"taking it; {self.fix}")

    def _create(self) -> bool:
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "start": _proc_start(os.getpid()), "started": time.time(),
                "launcher": self.launcher, "job": self.job, "attempt": self.attempt,
                "token": self.token,
                "argv": " ".join(sys.argv)[:300]}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:  # a full disk, say: leave no empty lock behind
            os.unlink(self.path)
            raise
        return True

    def _stale_reason(self, info: dict, mtime: float) -> str | None:
        host, pid = info.get("host"), info.get("pid")
        holder = f"pid {pid} on {host}"
        if not info:  # created but never filled: its creator died within microseconds
            age = _fs_now(os.path.dirname(self.path)) - mtime
            return f"an empty lock file, {age:.0f} s old" if age > 5 else None
        earlier = self._earlier_attempt(info)
        if earlier:
            return f"{holder}, {earlier}"
        if host == socket.gethostname() and isinstance(pid, int):
            if not pid_alive(pid, info.get("start")):
                return f"{holder}, which is no longer running"
            return None
        age = _fs_now(os.path.dirname(self.path)) - mtime
        if age > STALE_S:
            return f"{holder}, no heartbeat for {age:.0f} s"
        return None

    def _earlier_attempt(self, info: dict) -> str | None:
        """How the lock is an earlier attempt of this process's launcher job, if it is."""
        if self.job is None or info.get("job") != self.job \
                or (info.get("launcher") or "torchrun") != self.launcher:
            return None
        if self.launcher == "ray":
            if info.get("attempt") == self.attempt:
                return None
            return f"an earlier attempt of this Ray trial {self.job}, which Ray Train has stopped"
        try:
            theirs = int(info.get("attempt") or 0)
        except (TypeError, ValueError):
            return None
        if theirs < self.attempt:
            return f"attempt {theirs} of this job {self.job}, which its launcher has stopped"
        return None

    def _take_over(self, judged: dict) -> bool:
        """Move the stale lock out of the way; False if someone else got there first."""
        private = f"{self.path}.stale-{self.token}"
        try:
            os.rename(self.path, private)
        except FileNotFoundError:
            return False
        moved, _ = _read(private)
        if moved is not None and moved.get("token") != judged.get("token"):
            # A contender replaced the stale lock between our look and our rename: put its
            # live lock back (link fails if yet another one exists; then it is theirs anyway).
            try:
                os.link(private, self.path)
            except OSError:
                pass
            os.unlink(private)
            return False
        os.unlink(private)
        return True

    def _busy(self, info: dict, mtime: float) -> str:
        started = info.get("started")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) \
            if isinstance(started, (int, float)) else "at an unknown time"
        age = _fs_now(os.path.dirname(self.path)) - mtime
        return (f"{self.what} is in use by pid {info.get('pid')} on {info.get('host')} "
                f"(started {when}, last heartbeat {max(age, 0):.0f} s ago; lock file "
                f"{self.path}); {self.fix}; if that process is gone, delete the lock file")

    # ---------------------------------------------------------------- holding it
    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a full or flaky filesystem must not kill the run from this thread

    def release(self) -> None:
        self._stop.set()
        info, _ = _read(self.path)
        if info is not None and info.get("token") == self.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunFolder:
    """A training run's folder, held for one run: ``claim()`` locks it (``LOCK_NAME``), refuses
    to overwrite what an earlier run left, and removes temporaries of killed writers;
    ``release()`` (or leaving the ``with`` block) gives the lock back.

    ``resume``: continuing the run there is asked for (``--resume``), as it is implicitly for
    a restarted attempt of a launcher job (``ctx.restart_count``)."""

    def __init__(self, path: str, ctx, *, resume: bool = False):
        self.path = path
        self.checkpoints = os.path.join(path, "checkpoints")
        self.ctx = ctx
        self.resume = resume
        self.lock: RunLock | None = None

    def claim(self) -> "RunFolder":
        """Rank 0 decides, and every rank learns the outcome (one broadcast), so a refusal
        ends all ranks with the same line instead of leaving the others waiting."""
        from seltrain import distributed

        err = own = None
        if self.ctx.is_main:
            try:
                self.lock = self._lock_and_check()
            except Exception as e:
                if not self.ctx.distributed:
                    raise
                # Never leave the other ranks waiting: they get a one-line error (a bug
                # keeps its traceback on rank 0).
                own = e
                err = e if isinstance(e, SeltrainError) else CheckpointError(
                    f"rank 0 could not prepare the run folder {self.path} "
                    f"({type(e).__name__}: {e})")
        err = distributed.broadcast_object(err)
        if own is not None:
            raise own
        if err is not None:
            raise err
        return self

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _lock_and_check(self) -> RunLock:
        from seltrain.atomic import remove_stale_temporaries

        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            blocker = file_in_the_way(self.path)
            why = f"{blocker} is a file, not a folder" if blocker else e.strerror
            raise ConfigError(f"cannot create the run folder {self.path}: {why}; set "
                              "run.out_dir to a folder you can write") from None
        try:
            lock = RunLock(os.path.join(self.path, LOCK_NAME), what=f"run folder {self.path}",
                           fix="wait for that run to end, or set another run.name").acquire()
        except OSError as e:
            if is_disk_full(e):
                raise CheckpointError(f"no space left on {self.path}; free space there and "
                                      "run again") from None
            raise ConfigError(f"cannot lock the run folder {self.path} ({e.strerror}); "
                              "set run.out_dir to a folder you can write") from None
        try:
            self._refuse_to_overwrite()
            for folder in (self.checkpoints, self.path):
                remove_stale_temporaries(folder)
        except BaseException:
            lock.release()
            raise
        return lock

    def earlier_run_files(self) -> list[str]:
        """What an earlier run left here that a new run would overwrite."""
        found = [os.path.join("checkpoints", f) for f in sorted(os.listdir(self.checkpoints))
                 if f.endswith(".pt") and not f.startswith(".")] \
            if os.path.isdir(self.checkpoints) else []
        ds = os.path.join(self.checkpoints, "deepspeed")
        if os.path.isdir(ds) and os.listdir(ds):
            found.append("checkpoints/deepspeed/ (ZeRO shards)")
        found += [f for f in ("metrics.jsonl", "summary.json")
                  if os.path.exists(os.path.join(self.path, f))]
        return found

    def _refuse_to_overwrite(self) -> None:
        from seltrain.metrics import read_records

        restarted = self.ctx.restart_count > 0
        found = self.earlier_run_files()
        last = os.path.join(self.checkpoints, "last.pt")
        has_last = os.path.exists(last)
        if not (self.resume or restarted):
            if has_last:
                raise ConfigError(f"{self.path} already holds {last}; pass --resume to continue "
                                  "that run, or set run.name to start a new one")
            if found:
                raise ConfigError(f"{self.path} already holds {', '.join(found)} from an "
                                  "earlier run, which a new run would overwrite; set run.name "
                                  "to start a new run, or move those files away")
            return
        if has_last:
            return
        # Resuming without last.pt starts from scratch, which is right only where no epoch
        # was ever checkpointed: a crash before the first last.pt leaves at most epoch 1's
        # metrics line (and DeepSpeed shards without the .pt that commits them).
        records = read_records(os.path.join(self.path, "metrics.jsonl"))[0]
        later = [f for f in found if f in ("checkpoints/best.pt", "summary.json")
                 or f.startswith("checkpoints/epoch_")]  # run.keep_epochs' copies
        if later or any(r.get("epoch", 0) > 0 for r in records):
            raise CheckpointError(
                f"cannot resume {self.path}: it holds {', '.join(found)} but no "
                "checkpoints/last.pt to continue from (deleted, or lost); restore last.pt, or "
                "set run.name to start a new run")
