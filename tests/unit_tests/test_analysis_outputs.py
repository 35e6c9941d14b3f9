"""An analysis' output folder as one unit (seltrain/analysis/outputs.py): filled under a
temporary name, renamed into place whole with its marker, left untouched by a failed
analysis, a killed one's leftovers removed, and another run's results refused without
--force."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from seltrain.analysis.outputs import MARKER, OutputFolder
from seltrain.errors import ConfigError


def _target(tmp_path, name="r"):
    run = tmp_path / "runs" / name
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(name=name, run_dir=str(run),
                           ckpt_path=str(run / "checkpoints" / "best.pt"))


def _opts(out=None, force=False):
    return SimpleNamespace(out=None if out is None else str(out), force=force)


def _analyse(target, opts, files, name="ablation", n_targets=1) -> OutputFolder:
    folder = OutputFolder(target, opts, name, n_targets)
    with folder as staging:
        assert os.path.basename(staging).startswith(f".{os.path.basename(folder.final)}.tmp-")
        assert not os.path.exists(folder.final) or MARKER in os.listdir(folder.final)
        for f, text in files.items():
            with open(os.path.join(staging, f), "w") as fh:
                fh.write(text)
    return folder


def test_the_default_folder_is_replaced_whole_with_its_marker(tmp_path):
    target = _target(tmp_path)
    folder = _analyse(target, _opts(), {"summary.json": "1", "units_layer1.csv": "u"})
    assert folder.final == os.path.join(target.run_dir, "analysis", "ablation")
    assert sorted(os.listdir(folder.final)) == sorted([MARKER, "summary.json",
                                                       "units_layer1.csv"])
    with open(os.path.join(folder.final, MARKER)) as f:
        assert json.load(f) == {"analysis": "ablation", "checkpoint": target.ckpt_path}
    _analyse(target, _opts(), {"summary.json": "2"})
    assert sorted(os.listdir(folder.final)) == [MARKER, "summary.json"]  # nothing of the old
    with open(os.path.join(folder.final, "summary.json")) as f:
        assert f.read() == "2"
    # Beside it: only the folder; the lock and every temporary are gone.
    assert os.listdir(os.path.dirname(folder.final)) == ["ablation"]


def test_a_failed_analysis_leaves_the_earlier_results_untouched(tmp_path):
    target = _target(tmp_path)
    folder = _analyse(target, _opts(), {"summary.json": "earlier"})
    with pytest.raises(RuntimeError, match="out of memory"):
        with OutputFolder(target, _opts(), "ablation", 1) as staging:
            with open(os.path.join(staging, "summary.json"), "w") as f:
                f.write("half")
            raise RuntimeError("out of memory")
    with open(os.path.join(folder.final, "summary.json")) as f:
        assert f.read() == "earlier"
    assert os.listdir(os.path.dirname(folder.final)) == ["ablation"]


def test_a_killed_analysis_leaves_a_temporary_the_next_one_removes(tmp_path, capsys):
    target = _target(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    parent = os.path.join(target.run_dir, "analysis")
    left = os.path.join(parent, f".ablation.tmp-{dead.pid}-0a0b0c0d")
    os.makedirs(left)
    with open(os.path.join(left, "summary.json"), "w") as f:
        f.write("{")
    folder = _analyse(target, _opts(), {"summary.json": "1"})
    assert os.listdir(parent) == ["ablation"] and os.path.isdir(folder.final)
    assert capsys.readouterr().err == (f"seltrain: removed .ablation.tmp-{dead.pid}-0a0b0c0d, "
                                       f"left in {parent} by an interrupted write\n")


def test_an_out_holding_other_results_is_refused_unless_forced(tmp_path):
    out = tmp_path / "out"
    _analyse(_target(tmp_path, "a"), _opts(out), {"summary.json": "a"})
    # The same analysis of the same checkpoint again replaces it, as the default folder is.
    _analyse(_target(tmp_path, "a"), _opts(out), {"summary.json": "a2"})
    assert (out / "summary.json").read_text() == "a2"
    other = _target(tmp_path, "b")
    with pytest.raises(ConfigError, match=r"already holds the ablation results of .*/runs/a/"
                                          r"checkpoints/best.pt; pass --force"):
        _analyse(other, _opts(out), {"summary.json": "b"})
    assert (out / "summary.json").read_text() == "a2"
    _analyse(other, _opts(out, force=True), {"summary.json": "b"})
    assert (out / "summary.json").read_text() == "b"
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"already holds 1 other file\(s\) \(notes.txt\)"):
        _analyse(other, _opts(stray), {"summary.json": "b"})
    assert os.listdir(stray) == ["notes.txt"]
