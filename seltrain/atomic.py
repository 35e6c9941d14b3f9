"""Files written whole or not at all: ``atomic_write``, and the cleanup of what a killed writer left.

Every file seltrain writes for others to read while it runs (checkpoints, metrics.jsonl,
summary.json, config.yaml, a ``.beton`` and its sidecar, a search's bookkeeping) is written
to a temporary file beside it, flushed, fsynced and renamed over the real name. A reader
sees the old file or the new one, never a part; a crash, a signal or a full disk mid-write
leaves the old file as it was.

One name for every temporary: ``.<name>.tmp-<pid>-<random>`` in the target's folder (hidden,
so a listing of the run folder shows only real files; the pid says which process wrote it;
the random part keeps two writers of one process apart). A writer that fails removes its
own temporary; one killed outright (SIGKILL, a lost node) cannot, and the next holder of the
folder's lock removes it with ``remove_stale_temporaries``.

A folder written as one unit (an analysis' output folder) goes the same way with
``atomic_folder``: filled under a temporary name of the same form, renamed into place.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sys
from typing import IO, Callable, Iterator

_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>\d+)-[0-9A-Za-z]+(?:\..*)?$")


def _temporary_name(path: str) -> str:
    """The one name of a temporary of ``path``: ``.<name>.tmp-<pid>-<random>`` beside it."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _create_temporary(path: str) -> tuple[int, str]:
    """A new, empty temporary for ``path`` in its folder: (fd, temporary path).

    Created with mode 0666 less the umask (0644 under the usual 022), like any file a user
    writes, not mkstemp's 0600: the rename keeps the mode, and a 0600 checkpoint is unreadable
    to the other users and nodes that read a shared (NFS) run folder. O_EXCL with a random
    name is what mkstemp does too."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = _temporary_name(path)
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {path}")


@contextlib.contextmanager
def _replacing(path: str) -> Iterator[tuple[int, str]]:
    """A temporary for ``path`` (its folder made if need be), renamed over ``path`` when the
    block ends without an error and removed when it raises."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", *, encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` holds what was written once
    the block ends, flushed and fsynced to the disk, and is untouched if the block raises.
    ``mode``: ``"w"`` (text, UTF-8 unless ``encoding``; ``newline`` as ``open`` takes it,
    ``""`` for the csv module) or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a whole file: mode 'w' or 'wb', not {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with _replacing(path) as (fd, _):
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """``atomic_write`` for a writer that opens the file by name (FFCV's): yields the
    temporary's path, an empty file the writer may open, truncate and fill; fsynced and
    renamed over ``path`` when the block ends, removed if it raises."""
    with _replacing(path) as (fd, tmp):
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_folder(path: str) -> Iterator[str]:
    """A folder replaced whole: ``with atomic_folder(path) as staging:`` fill ``staging``, a new
    empty folder beside ``path`` named as every temporary is; when the block ends without an
    error, what ``path`` held is moved aside (under a temporary name too), ``staging`` is
    renamed to ``path`` and the old folder removed. If the block raises, ``staging`` is
    removed and ``path`` is untouched. A reader sees the old folder or the new one, never a
    mix of the two; between the two renames ``path`` is absent for an instant (POSIX has no
    portable exchange of two folders). Write the files inside with ``atomic_write``: it
    fsyncs them, so the renamed folder holds them whole after a crash too."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for _ in range(100):
        staging = _temporary_name(path)
        try:
            os.mkdir(staging)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name for {path}")
    old = None
    try:
        yield staging
        if os.path.lexists(path):
            old = _temporary_name(path)
            os.rename(path, old)
        try:
            os.rename(staging, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
                old = None
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        _remove(old)


def _remove(path: str) -> None:
    """A temporary gone, whether a file or a folder."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def pid_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return True


def _writer_alive(pid: int) -> bool:
    """Whether ``pid`` is another live process on this host (ours is never mid-write here:
    every writer of this process removes its own temporary when it fails)."""
    return pid != os.getpid() and pid_running(pid)


def remove_stale_temporaries(folder: str, of: str | None = None, *,
                             before_remove: Callable[[str], None] | None = None,
                             say: Callable[[str], None] | None = None) -> list[str]:
    """Delete the temporaries (files, or folders of ``atomic_folder``) that killed writers left
    in ``folder`` (``of``: only those of that file or folder), say so on stderr, and return
    their names.

    Call it while holding the lock of the folder (or of the file): then no live writer of it
    exists. A temporary whose pid is a live process on this host is spared anyway.
    ``before_remove(path)`` runs first for each (to free what a writer kept outside the
    folder, as FFCV's shared memory)."""
    if not os.path.isdir(folder):
        return []
    target = None if of is None else os.path.basename(of)
    removed = []
    for name in sorted(os.listdir(folder)):
        m = _TEMPORARY.match(name)
        path = os.path.join(folder, name)
        if m is None or (target is not None and m["target"] != target) \
                or not os.path.lexists(path) or _writer_alive(int(m["pid"])):
            continue
        try:
            if before_remove is not None:
                before_remove(path)
            _remove(path)
            removed.append(name)
        except FileNotFoundError:
            pass
    if removed:
        (say or (lambda msg: print(msg, file=sys.stderr, flush=True)))(
            f"seltrain: removed {', '.join(removed)}, left in {folder} by an interrupted write")
    return removed
