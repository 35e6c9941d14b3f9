"""User-facing errors: each one is a single line that names the problem and the fix.

The CLI prints ``seltrain: error: <message>`` and exits with ``exit_code``; no traceback.
"""
from __future__ import annotations

import difflib
import errno
import os
import re
from typing import Iterable


class SeltrainError(Exception):
    exit_code = 1


class ConfigError(SeltrainError):
    """A recipe or override is wrong: unknown key, bad type, missing file, unknown name."""
    exit_code = 2


class DataError(SeltrainError):
    """A dataset or .beton file is missing, corrupt, or disagrees with the recipe."""
    exit_code = 3


class CheckpointError(SeltrainError):
    """A checkpoint is missing, corrupt or belongs to a different run."""
    exit_code = 3


class TrainingError(SeltrainError):
    """Training cannot go on (a NaN/inf loss, for instance); the last good checkpoint stays."""
    exit_code = 4


class PeerLost(SeltrainError):
    """Another rank of a multi-rank job died; the launcher stops or restarts the job."""
    exit_code = 5


class Interrupted(SeltrainError):
    """Ctrl-C (SIGINT): the message says what was kept and how to continue."""
    exit_code = 130


# The longest user value an error message echoes, and the longest message printed: a value
# from a recipe can be huge (a YAML alias bomb expands to gigabytes), and one line must stay
# one readable line.
EXCERPT_CHARS = 80
MESSAGE_CHARS = 2000


def excerpt(value, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (``'abc...' (1234 chars)``), for echoing a
    user's value in a one-line error. Containers are cut before their repr is built whole."""
    text = _bounded_repr(value, limit + 1)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (cut)"


def _bounded_repr(value, budget: int) -> str:
    """repr() that stops once ``budget`` characters are out: a nested list of 10^9 items
    is never turned into one string."""
    if isinstance(value, (list, tuple, dict)):
        opening, closing = {tuple: "()", dict: "{}"}.get(type(value), "[]")
        parts, used = [], 1
        items = value.items() if isinstance(value, dict) else value
        for item in items:
            if used > budget:
                parts.append("...")
                break
            text = (f"{_bounded_repr(item[0], budget - used)}: "
                    f"{_bounded_repr(item[1], budget - used)}") if isinstance(value, dict) \
                else _bounded_repr(item, budget - used)
            parts.append(text)
            used += len(text) + 2
        return opening + ", ".join(parts) + closing
    text = repr(value)
    return text if len(text) <= budget else text[:budget]


def did_you_mean(word, options: Iterable, prefix: str = "") -> str:
    """`` (did you mean 'PREFIX+closest'?)`` when an option is close to ``word``, else ``""``:
    the hint every "unknown name" error carries."""
    near = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean '{prefix}{near[0]}'?)" if near else ""


def without_source_location(text: str) -> str:
    """``text`` without the C++ source locations torch and gloo put in their messages:
    "[enforce fail at inline_container.cc:747] . open file failed ..." -> "open file failed
    ...", "[.../pair.cc:545] Read error ..." -> "Read error ..."."""
    return re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*(?:\.\s+)?", "", text)


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line.

    A torch DataLoader worker re-raises its worker's exception as ``type(e)(text)`` where the
    text is "Caught X in DataLoader worker ...\\nOriginal Traceback ...\\nX: message": the
    user's message is the last line, after the exception's name.
    """
    text = str(e).strip()
    if "\nOriginal Traceback" in text:
        last = text.splitlines()[-1]
        name = f"{type(e).__name__}: "
        text = last.split(name, 1)[1] if name in last else last
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(text) > MESSAGE_CHARS:  # a message that echoes a huge value: one readable line
        text = f"{text[:MESSAGE_CHARS]}... ({len(text) - MESSAGE_CHARS} more characters cut)"
    return text


def is_disk_full(e: BaseException, folder: str | None = None) -> bool:
    """ENOSPC/EDQUOT, also when a library wrapped it: torch's zip writer says only "unexpected
    pos" or "file write failed" when a write comes up short, so with ``folder`` a failed
    write into a folder with (nearly) no free space counts as a full disk too."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
        return True
    if folder is not None:
        try:
            st = os.statvfs(folder)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 1 << 20
    return False


def no_space(path: str | None, what: str) -> str:
    """The one line for a full disk (or quota) while writing ``what`` into ``path``."""
    if not path:
        return f"no space left on the device while writing {what}; free space and run again"
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return f"no space left on {folder} while writing {what}; free space there (or choose a " \
           f"folder with room) and run again"


def file_in_the_way(path: str) -> str | None:
    """The first existing component of ``path`` that is a file, not a folder (so no folder can
    be made there: ``os.makedirs`` would fail with a bare ENOTDIR/EEXIST), or None."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
    return None if os.path.isdir(probe) else probe
