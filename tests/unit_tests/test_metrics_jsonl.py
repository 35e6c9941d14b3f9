"""metrics.jsonl: strict JSON out, a torn last line tolerated in, a gap rebuilt or refused."""
import json

import numpy as np
import pytest

from seltrain.errors import CheckpointError
from seltrain.metrics import RunSink, read_records, strict_json


def _no_constants(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))


def test_epoch_records_are_strict_json(tmp_path):
    sink = RunSink(str(tmp_path), tensorboard=False)
    sink.epoch({"epoch": 0, "train_batch_si": float("nan"), "lr": np.float32(0.5),
                "si": {"a": float("inf")}, "acc": None})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert _no_constants(line) == {"epoch": 0, "train_batch_si": None, "lr": 0.5,
                                   "si": {"a": None}, "acc": None}
    assert strict_json([1.0, float("-inf")]) == [1.0, None]


def test_torn_last_line_is_dropped_but_a_bad_middle_line_is_named(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"epoch": 0, "a": 1}\n{"epoch": 1, "a": 2}\n{"epoch": 2, "a"')
    records, torn = read_records(str(p))
    assert [r["epoch"] for r in records] == [0, 1] and torn
    p.write_text('{"epoch": 0}\n{"epo\n{"epoch": 2}\n')
    with pytest.raises(CheckpointError, match=r"metrics.jsonl:2 is not an epoch record"):
        read_records(str(p))
    assert read_records(str(tmp_path / "missing.jsonl")) == ([], False)


def test_resume_rebuilds_missing_epochs_from_the_history(tmp_path, capsys):
    history = [{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(3)]
    p = tmp_path / "metrics.jsonl"
    p.write_text(json.dumps(history[0]) + "\n" + '{"epoch": 1, "lo')  # epoch 2 lost, 1 torn
    sink = RunSink(str(tmp_path), tensorboard=False, resume_epoch=2, history=history)
    assert [_no_constants(ln) for ln in p.read_text().splitlines()] == history
    assert sink.records == history
    err = capsys.readouterr().err
    assert "rebuilt" in err and "epochs 2-3 were missing" in err and "torn" in err


def test_resume_without_history_refuses_a_gap_and_drops_later_epochs(tmp_path, capsys):
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (0, 2)))
    with pytest.raises(CheckpointError, match=r"holds epochs \[1, 3\] but checkpoints/last.pt "
                       r"is after epoch 3"):
        RunSink(str(tmp_path), tensorboard=False, resume_epoch=2)
    p.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (0, 1, 2)) + '{"ep')
    RunSink(str(tmp_path), tensorboard=False, resume_epoch=1)
    assert [json.loads(ln)["epoch"] for ln in p.read_text().splitlines()] == [0, 1]
    assert "torn" in capsys.readouterr().err
