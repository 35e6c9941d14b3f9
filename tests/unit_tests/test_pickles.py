"""The plain-data unpickler for CIFAR batches: what real batches name loads, under every
pickle protocol and both numpy module layouts; anything else is refused before it is called."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from seltrain.errors import DataError
from seltrain.pickles import load_data_pickle


def _batch():
    return {b"batch_label": b"training batch 1 of 5", b"labels": [3, 1, 4],
            b"data": np.arange(3 * 3072, dtype=np.uint8).reshape(3, 3072),
            b"filenames": [b"a.png", b"b.png", b"c.png"]}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_real_batches_load_under_every_protocol(tmp_path, protocol):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(_batch(), protocol=protocol))
    got = load_data_pickle(str(path), "CIFAR batch", "fix")
    assert got[b"labels"] == [3, 1, 4] and got[b"filenames"][2] == b"c.png"
    np.testing.assert_array_equal(got[b"data"], _batch()[b"data"])


def test_numpy1_names_load(tmp_path):
    """The official files were written under numpy 1: numpy.core.multiarray._reconstruct."""
    data = pickle.dumps(_batch(), protocol=2)
    assert b"numpy._core.multiarray" in data
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / "b"
    path.write_bytes(old)
    np.testing.assert_array_equal(load_data_pickle(str(path), "CIFAR batch", "fix")[b"data"],
                                  _batch()[b"data"])


class _Call:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("payload, name", [
    (_Call(os.system, "true"), "posix.system"),
    (_Call(eval, "1"), "builtins.eval"),
    (_Call(getattr, "text", "upper"), "builtins.getattr"),
    (_Call(np.load, "x.npy"), "numpy.load"),
])
def test_anything_else_is_refused_uncalled(tmp_path, payload, name):
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": payload}, protocol=2))
    with pytest.raises(DataError, match=rf"it names {name}, which seltrain does not call"):
        load_data_pickle(str(path), "CIFAR batch", "extract it again")


def test_python2_builtin_containers_load(tmp_path):
    """A Python 2 pickle names __builtin__.set: read as builtins.set, which is plain data."""
    path = tmp_path / "p2"
    path.write_bytes(pickle.dumps({b"s": {1, 2}}, protocol=2))
    assert b"__builtin__" in path.read_bytes()
    assert load_data_pickle(str(path), "CIFAR batch", "fix") == {b"s": {1, 2}}


def test_garbage_is_one_line(tmp_path):
    path = tmp_path / "cut"
    path.write_bytes(pickle.dumps(_batch(), protocol=2)[:100])
    with pytest.raises(DataError, match=r"cannot read .*the file is corrupt: extract it again"):
        load_data_pickle(str(path), "CIFAR batch", "extract it again")
