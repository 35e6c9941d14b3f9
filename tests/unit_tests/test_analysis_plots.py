"""The analysis figures and result files (seltrain/analysis/plots.py, serialize.py)."""
from __future__ import annotations

import csv
import json

import numpy as np

from seltrain.analysis import plots
from seltrain.analysis.serialize import to_jsonable, write_csv, write_json

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_every_figure_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    layers = {f"layer{i}": rng.uniform(0, 1, 16) for i in range(3)}
    f = np.linspace(0, 1, 5)
    cum = {"layer": "layer1", "fractions": f, "si_high_first": 1 - f, "si_low_first": 1 - f / 2,
           "random_mean": 1 - 0.7 * f, "random_std": np.full(5, 0.05)}
    corr = {"severities": [1, 2, 3, 4, 5], "clean_acc": 0.9, "mean_corruption_accuracy": 0.6,
            "accuracy": {"fog": np.linspace(0.8, 0.4, 5), "contrast": np.linspace(0.85, 0.3, 5)}}
    atk = {"attack": "pgd", "eps": [0, 1 / 255, 4 / 255], "accuracy": np.array([0.9, 0.5, 0.1])}
    dim = {c: {n: {"n_components": k + i} for i, n in enumerate(layers)}
           for c, k in (("clean", 5), ("adversarial", 9))}
    written = [
        plots.histograms(layers, tmp_path / "a" / "si.png", xlabel="SI", value_range=(0, 1)),
        plots.layer_means(layers, tmp_path / "means.png", ylabel="mean SI"),
        plots.cumulative_ablation(cum, tmp_path / "cum.png"),
        plots.drop_scatter(layers["layer0"], layers["layer1"], tmp_path / "scatter.png", rho=0.1),
        plots.orientation_distributions(layers, layers, tmp_path / "osi.png"),
        plots.tuning_curves(rng.uniform(0, 1, (4, 12)), tmp_path / "tuning.png"),
        plots.corruption_accuracy(corr, tmp_path / "corr.png"),
        plots.attack_accuracy(atk, tmp_path / "atk.png"),
        plots.attack_accuracy({"pgd": atk, "fgsm": atk}, tmp_path / "atk2.png"),
        plots.dimensionality(dim, tmp_path / "dim.png"),
        plots.against([0.1, 0.2, 0.3], {"mCA": [0.5, 0.6, 0.7]}, tmp_path / "vs.png",
                      xlabel="mean SI", ylabel="accuracy"),
    ]
    assert all(_is_png(p) for p in written)


def test_results_serialize_to_strict_json_and_csv(tmp_path):
    result = {"acc": np.array([0.5, np.nan]), "n": np.int64(3), "ok": np.bool_(True),
              "nested": {"x": (1.0, float("inf"))}}
    assert to_jsonable(result) == {"acc": [0.5, None], "n": 3, "ok": True,
                                   "nested": {"x": [1.0, None]}}
    path = write_json(tmp_path / "r" / "result.json", result)
    assert json.loads(path.read_text())["acc"] == [0.5, None]
    path = write_csv(tmp_path / "units.csv", {"unit": range(3), "si": np.array([0.1, np.nan, 1])})
    rows = list(csv.reader(path.open()))
    assert rows == [["unit", "si"], ["0", "0.1"], ["1", ""], ["2", "1.0"]]
