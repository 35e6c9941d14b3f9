"""The fan-out's plan without Ray: options checked, task keys, and what a rerun skips."""
from __future__ import annotations

import json
import os

import pytest

from seltrain.analysis.fanout import FanoutOptions, options_record, plan, task_key
from seltrain.analysis.robustness import RobustnessOptions
from seltrain.analysis.target import TargetRef
from seltrain.analysis.unit_selectivity import SelectivityOptions
from seltrain.errors import ConfigError


@pytest.mark.parametrize("kw,word", [({"cpus_per_task": 0}, "--cpus-per-task 0"),
                                     ({"gpus_per_task": -1}, "--gpus-per-task -1"),
                                     ({"gpus_per_task": 1.5}, "whole number"),
                                     ({"address": ""}, "--address")])
def test_bad_fanout_options_are_one_line(kw, word):
    with pytest.raises(ConfigError, match=word):
        FanoutOptions(**kw)
    assert FanoutOptions(gpus_per_task=0.25).gpus_per_task == 0.25


def _ckpt(tmp_path, name="run", content=b"weights"):
    run = tmp_path / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(content)
    return TargetRef(str(run), str(run / "checkpoints" / "best.pt"))


def test_task_key_follows_options_and_checkpoint_bytes(tmp_path):
    ref = _ckpt(tmp_path)
    base = task_key("robustness", ref, RobustnessOptions())
    assert base == task_key("robustness", ref, RobustnessOptions(out="x", force=True))
    # --checkpoint picks the file; the key hashes that file's bytes, not the option
    assert base == task_key("robustness", ref, RobustnessOptions(checkpoint="last"))
    assert base != task_key("robustness", ref, RobustnessOptions(eps="0,0.02"))
    assert base != task_key("dimensionality", ref, RobustnessOptions())
    other = _ckpt(tmp_path, "other", b"other weights")
    assert base != task_key("robustness", other, RobustnessOptions())
    assert "out" not in options_record(RobustnessOptions())
    assert options_record(RobustnessOptions(eps="0,0.5"))["eps"] == [0.0, 0.5]


def test_plan_skips_folders_whose_marker_holds_the_key(tmp_path):
    refs = [_ckpt(tmp_path, "a"), _ckpt(tmp_path, "b", b"b")]
    opts = {"selectivity": SelectivityOptions(), "robustness": RobustnessOptions()}
    todo, done = plan(refs, opts)
    assert len(todo) == 4 and not done
    t = todo[0]
    os.makedirs(t.out_dir)
    with open(os.path.join(t.out_dir, ".seltrain-analysis.json"), "w") as f:
        json.dump({"analysis": t.analysis, "key": t.key, "summary": {"mean_si": 0.25}}, f)
    todo, done = plan(refs, opts)
    assert len(todo) == 3 and [(d.status, d.summary["mean_si"]) for d in done] == [
        ("skipped", 0.25)]
    assert len(plan(refs, opts, force=True)[0]) == 4
