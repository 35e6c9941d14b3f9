"""Where an analysis of one checkpoint writes: its output folder, written as one unit.

``OutputFolder`` stages the files each analysis' ``write`` makes in a temporary folder beside
the destination, renames it into place when the analysis ends well, and holds a lock on the
destination meanwhile; ``refuse_single_output`` guards an ``--out`` shared by several runs.
What goes into the folder is each analysis' own business (its module's ``write``).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil

from seltrain.atomic import atomic_folder, atomic_write, remove_stale_temporaries
from seltrain.errors import ConfigError, file_in_the_way


MARKER = ".seltrain-analysis.json"


class OutputFolder:
    """Where one analysis of one checkpoint writes, as one unit.

    ``with OutputFolder(target, opts, name, n_targets) as staging:`` the analysis writes into
    ``staging`` (``seltrain.atomic.atomic_folder``: a hidden temporary folder beside the
    destination); when the block ends without an error, the temporary folder is renamed into
    place, replacing what the destination held, whole; on an error it is removed and the
    destination is untouched.
    For its whole life the destination is locked (``seltrain.runlock``, a lock file beside
    it, as run folders are locked), so two analyses into one folder never mix their files.

    The destination is ``--out`` (``--out/<run>`` with several runs) or
    ``<run>/analysis/<name>``. A non-empty ``--out`` that holds something else than this
    analysis of this checkpoint (another run's results, any other files) is refused unless
    ``--force``; a marker file (``MARKER``) tells which analysis and checkpoint a folder holds,
    and its headline numbers (``headline``, set before the block ends: the analysis'
    ``SWEEP_HEADLINE`` keys), which ``seltrain report`` lists without reading the results.
    """

    def __init__(self, target, opts, name: str, n_targets: int, key: str | None = None):
        self.name, self.ckpt = name, os.path.abspath(target.ckpt_path)
        out = opts.out
        self.final = final_folder(target.run_dir, opts, name, n_targets, target.ckpt_path)
        self.chosen, self.force = bool(out), bool(getattr(opts, "force", False))
        # The task key (seltrain.analysis.fanout.task_key): which options and checkpoint the
        # folder's results are of, so a rerun on a cluster skips what is already done.
        self.key = key
        self.summary: dict | None = None
        self.parent, base = os.path.dirname(self.final), os.path.basename(self.final)
        self.lock_path = os.path.join(self.parent, f".{base}.lock")
        self.headline: dict | None = None
        self._held: contextlib.ExitStack | None = None
        self._staging: str | None = None

    def __enter__(self) -> str:
        from seltrain.runlock import RunLock

        self._make_parent()
        lock = RunLock(self.lock_path, what=f"analysis output folder {self.final}",
                       fix="wait for that analysis to end, or choose another --out")
        lock.acquire()
        with contextlib.ExitStack() as held:
            held.callback(lock.release)  # last out: after the folder is in place or removed
            self._refuse_foreign()
            # Under the lock no other writer of this folder is alive: a temporary left beside
            # it is from one killed mid-write.
            remove_stale_temporaries(self.parent, of=self.final)
            self._staging = held.enter_context(atomic_folder(self.final))
            self._held = held.pop_all()
        return self._staging

    def __exit__(self, kind, exc, tb) -> None:
        from seltrain.metrics import strict_json

        held, self._held = self._held, None
        if kind is None:  # the marker last: it carries the headline the analysis has set
            try:
                with atomic_write(os.path.join(self._staging, MARKER)) as f:
                    json.dump({"analysis": self.name, "checkpoint": self.ckpt,
                               **({"key": self.key} if self.key else {}),
                               **({"headline": strict_json(self.headline)}
                                  if self.headline else {}),
                               **({"summary": strict_json(self.summary)}
                                  if self.summary else {})}, f)
            except BaseException as e:
                held.__exit__(type(e), e, e.__traceback__)
                raise
        held.__exit__(kind, exc, tb)

    def _make_parent(self) -> None:
        if os.path.isfile(self.final):
            raise ConfigError(f"cannot write the {self.name} results to {self.final}: it is a "
                              "file, not a folder; pass --out with a folder")
        blocker = file_in_the_way(self.parent)
        try:
            if blocker:
                raise NotADirectoryError(f"{blocker} is a file, not a folder")
            os.makedirs(self.parent, exist_ok=True)
        except OSError as e:
            why = f"{blocker} is a file, not a folder" if blocker else e.strerror
            raise ConfigError(f"cannot write the {self.name} results to {self.final}: {why}; "
                              "pass --out with a folder you can write") from None

    def _refuse_foreign(self) -> None:
        if not self.chosen or self.force or not os.path.isdir(self.final):
            return
        entries = sorted(os.listdir(self.final))
        if not entries:
            return
        marker = _read_marker(self.final)
        if (marker.get("analysis"), marker.get("checkpoint")) == (self.name, self.ckpt):
            return  # this analysis of this checkpoint again: replaced as the default folder is
        held = (f"the {marker.get('analysis')} results of {marker.get('checkpoint')}"
                if marker else f"{len(entries)} other file(s) ({', '.join(entries[:3])}"
                               f"{', ...' if len(entries) > 3 else ''})")
        raise ConfigError(f"--out {self.final} already holds {held}; pass --force to replace "
                          "that folder whole, or choose another --out")


def final_folder(run_dir: str, opts, name: str, n_targets: int,
                 ckpt_path: str | None = None) -> str:
    """Where analysis ``name`` of the run ``run_dir`` goes: ``--out`` (``--out/<run>`` with
    several runs) or ``<run>/analysis/<name>``. A kept epoch's checkpoint
    (``checkpoints/epoch_003.pt``, ``run.keep_epochs``) goes to
    ``<run>/analysis/epoch_003/<name>`` (``--out/<run>/epoch_003``), so each epoch's results
    sit beside the others and the best checkpoint's."""
    stem = os.path.splitext(os.path.basename(ckpt_path or ""))[0]
    kept = KEPT_EPOCH.fullmatch(stem) is not None
    if opts.out:
        if kept:
            return os.path.abspath(os.path.join(opts.out, os.path.basename(run_dir), stem))
        return os.path.abspath(os.path.join(opts.out, os.path.basename(run_dir))
                               if n_targets > 1 else opts.out)
    if kept:
        return os.path.abspath(os.path.join(run_dir, "analysis", stem, name))
    return os.path.abspath(os.path.join(run_dir, "analysis", name))


def over_epochs_folder(run_dir: str, opts, name: str) -> str:
    """Where ``--checkpoint kept`` puts analysis ``name``'s results across the kept epochs:
    ``<run>/analysis/<name>_over_epochs`` (``--out/<run>/<name>_over_epochs``)."""
    base = os.path.join(opts.out, os.path.basename(run_dir)) if opts.out else \
        os.path.join(run_dir, "analysis")
    return os.path.abspath(os.path.join(base, f"{name}_over_epochs"))


# A kept epoch's checkpoint name (seltrain.checkpoint.epoch_name).
KEPT_EPOCH = re.compile(r"epoch_\d{3,}")


def read_marker(folder: str) -> dict:
    """The marker of an analysis output folder ({} when there is none, or it is unreadable)."""
    return _read_marker(folder)


def refuse_single_output(out: str, force: bool) -> None:
    """With several runs each goes to ``--out/<run>``: an ``--out`` that holds one analysis'
    own results (a marker) is another run's output, refused unless ``--force``, which clears
    it first."""
    marker = _read_marker(out) if os.path.isdir(out) else {}
    if not marker:
        return
    if not force:
        raise ConfigError(f"--out {os.path.abspath(out)} already holds the "
                          f"{marker.get('analysis')} results of {marker.get('checkpoint')}; "
                          "pass --force to replace that folder whole, or choose another --out")
    shutil.rmtree(out)


def _read_marker(folder: str) -> dict:
    try:
        with open(os.path.join(folder, MARKER)) as f:
            marker = json.load(f)
        return marker if isinstance(marker, dict) else {}
    except (OSError, ValueError):
        return {}


def read_headlines(run_dir: str) -> dict[str, dict]:
    """{analysis: its headline numbers} of every analysis folder under ``run_dir/analysis``
    whose marker records them."""
    base = os.path.join(run_dir, "analysis")
    out = {}
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        marker = _read_marker(os.path.join(base, name))
        if isinstance(marker.get("headline"), dict):
            out[marker.get("analysis", name)] = marker["headline"]
    return out
