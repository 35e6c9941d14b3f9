"""Write analysis results: numpy-aware JSON, and CSV tables, each file whole
(``seltrain.atomic.atomic_write``).

Results are dicts of numpy arrays and scalars; ``to_jsonable`` turns them into plain lists,
floats and ints (NaN and infinities become null, so the files are strict JSON).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from seltrain.atomic import atomic_write
# Strict JSON of numpy/torch results (NaN and infinities as null): the one converter, which
# metrics.jsonl uses too.
from seltrain.metrics import strict_json as to_jsonable


def write_json(path, obj) -> Path:
    path = Path(path)
    with atomic_write(str(path)) as f:
        f.write(json.dumps(to_jsonable(obj), indent=1, allow_nan=False) + "\n")
    return path


def write_csv(path, columns: Mapping[str, Sequence]) -> Path:
    """A table from equal-length columns, e.g. ``{"unit": range(U), "si": si, "overall_drop":
    drops["overall_drop"]}``; NaN is written as an empty cell."""
    cols = {k: to_jsonable(np.asarray(v) if not isinstance(v, range) else list(v))
            for k, v in columns.items()}
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: { {k: len(v) for k, v in cols.items()} }")
    path = Path(path)
    with atomic_write(str(path), newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in zip(*cols.values()):
            w.writerow(["" if v is None else v for v in row])
    return path
