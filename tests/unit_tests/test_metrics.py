"""metrics.jsonl: strict JSON out, a torn last line tolerated in, a gap rebuilt or refused."""
import json

import numpy as np
import pytest

from seltrain.errors import CheckpointError
from seltrain.metrics import RunSink, read_records, strict_json, wait_to_sort_last


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


def test_resume_keeps_the_checkpoints_epochs_and_drops_later_ones(tmp_path, capsys):
    """A crash after epoch 4's record but before its checkpoint: resuming from epoch 2's
    checkpoint keeps records 0-2 byte for byte, drops 3 and 4, and says nothing."""
    p = tmp_path / "metrics.jsonl"
    records = [{"epoch": e, "loss": 2.0 - 0.25 * e} for e in range(5)]
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    sink = RunSink(str(tmp_path), tensorboard=False, resume_epoch=2, history=records[:3])
    assert [json.loads(ln) for ln in p.read_text().splitlines()] == records[:3]
    assert sink.records == records[:3]
    assert capsys.readouterr().err == ""  # the file agreed with the checkpoint
    sink.epoch({"epoch": 3, "loss": 1.4})  # the resumed run appends after them
    assert [json.loads(ln)["loss"] for ln in p.read_text().splitlines()] == [2.0, 1.75, 1.5, 1.4]
    # A fresh (not resumed) run starts a new file.
    RunSink(str(tmp_path), tensorboard=False)
    assert not p.exists()


def test_resume_purges_tensorboard_events_after_the_checkpoint_step(tmp_path):
    """Steps logged after the checkpoint (5-9) are hidden by the resumed run's purge_step, so
    each step's scalar is the resumed run's value: the curve never doubles back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = RunSink(str(tmp_path))
    for step in range(10):
        first.scalar("train/loss", step, step)
    first.close()
    resumed = RunSink(str(tmp_path), resume_epoch=0, resume_step=5, history=[{"epoch": 0}])
    for step in range(5, 8):
        resumed.scalar("train/loss", 100 + step, step)
    resumed.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert got == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0),
                   (5, 105.0), (6, 106.0), (7, 107.0)]


def test_a_new_event_file_sorts_after_the_folders_newest(tmp_path):
    """TensorBoard reads event files in name order (the later file's point wins at a step).
    Within one second and one process the writer count decides, and 99 sorts after 3: a
    file written after wait_to_sort_last sorts last all the same."""
    import os
    import socket
    import time

    from torch.utils.tensorboard import SummaryWriter

    planted = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
               f"{os.getpid()}.99")
    (tmp_path / planted).write_bytes(b"")
    wait_to_sort_last(str(tmp_path))
    writer = SummaryWriter(str(tmp_path))
    writer.close()
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2 and names[0] == planted
