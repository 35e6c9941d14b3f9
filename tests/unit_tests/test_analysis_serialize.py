"""Analysis result files (seltrain/analysis/serialize.py): numpy and torch results as strict
JSON (NaN and infinities as null) and as CSV tables (NaN as an empty cell), each written whole,
the folder made on the way."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

from seltrain.analysis.serialize import to_jsonable, write_csv, write_json


def test_results_serialize_to_strict_json(tmp_path):
    result = {"acc": np.array([0.5, np.nan]), "n": np.int64(3), "ok": np.bool_(True),
              "nested": {"x": (1.0, float("inf"))}, "t": torch.tensor([[1.5, -np.inf]])}
    plain = {"acc": [0.5, None], "n": 3, "ok": True, "nested": {"x": [1.0, None]},
             "t": [[1.5, None]]}
    assert to_jsonable(result) == plain
    path = write_json(tmp_path / "r" / "result.json", result)
    assert path == tmp_path / "r" / "result.json"
    text = path.read_text()
    # strict: no NaN/Infinity tokens a strict reader would refuse
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict {c}")) == plain
    assert text.endswith("}\n") and os.listdir(tmp_path / "r") == ["result.json"]


def test_tables_are_csv_with_empty_cells_for_nan(tmp_path):
    path = write_csv(tmp_path / "units.csv", {"unit": range(3), "si": np.array([0.1, np.nan, 1])})
    rows = list(csv.reader(path.open(newline="")))
    assert rows == [["unit", "si"], ["0", "0.1"], ["1", ""], ["2", "1.0"]]
    assert path.read_bytes() == b"unit,si\r\n0,0.1\r\n1,\r\n2,1.0\r\n"  # the csv module's dialect
    with pytest.raises(ValueError, match="columns differ in length"):
        write_csv(tmp_path / "bad.csv", {"unit": range(3), "si": [0.1]})
    assert os.listdir(tmp_path) == ["units.csv"]  # nothing of the refused table


def test_a_rewrite_replaces_the_file_whole(tmp_path):
    path = write_json(tmp_path / "summary.json", {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})  # fails mid-way: the old file stays
    assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["summary.json"]
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
