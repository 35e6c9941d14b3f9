"""benchmarks/bench_analysis_fanout.py: the plan's arithmetic on a case counted by hand, the
paper's task count, and its --help."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from helpers import REPO, subprocess_env

SCRIPT = os.path.join(REPO, "benchmarks", "bench_analysis_fanout.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_analysis_fanout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_of_a_tiny_case_counted_by_hand(bench):
    from seltrain.analysis.ablation import AblationOptions
    from seltrain.analysis.robustness import RobustnessOptions
    from seltrain.analysis.unit_selectivity import SelectivityOptions

    analyses = {"selectivity": SelectivityOptions(),
                "robustness": RobustnessOptions(corruptions="gaussian_noise,fog",
                                                severities="1", attack="fgsm", eps="0,0.01"),
                "ablation": AblationOptions(layers=("b",))}
    layers = {"selectivity": [("a", 4), ("b", 8)], "robustness": [("a", 4), ("b", 8)],
              "ablation": [("b", 8)]}
    plan = bench.fanout_plan(2, analyses, layers, images=10, model_bytes=100, act_bytes=10,
                             largest_act_bytes=2)
    rows = plan["analyses"]
    # selectivity: 3 runs of 2 layers (the first empty) + merge; robustness: 2 corruptions x
    # 1 severity + fgsm + merge; ablation: 4 runs of the units + merge. Twice (2 trials).
    assert [rows[n]["tasks_per_trial"] for n in analyses] == [4, 4, 5]
    assert plan["tasks"] == 2 * (4 + 4 + 5) == 26
    # Work per trial, in image-forward passes: selectivity 2 non-empty runs x 10 images;
    # robustness 2 x 10 + fgsm 10 images x 2 eps x (1 step x 3 + 1); ablation 4 runs of 2
    # units, each 10 x (1 intact + 2 zeroed).
    assert [rows[n]["work_per_trial"] for n in analyses] == [20, 20 + 80, 4 * 30]
    assert plan["total_work"] == 2 * 240
    assert plan["largest_task"] == "robustness (fgsm attack)"
    assert plan["largest_task_share"] == pytest.approx(80 / 480)
    assert rows["ablation"]["work_share"] == pytest.approx(240 / 480)
    # Memory: a forward-only batch of 256 holds 3 x the largest output; the attack keeps
    # every output and its gradient.
    assert rows["selectivity"]["memory_per_task_max_bytes"] == 100 + 256 * 3 * 2
    assert rows["robustness"]["memory_per_task_max_bytes"] == 100 + 256 * 2 * 10
    assert plan["memory_per_task_max_bytes"] == 5220
    # With depths (the share of the multiply-adds up to a layer's output), a zeroed unit's
    # pass runs the 0.25 above layer b: each ablation chunk 10 x (1 + 0.25 x 2).
    plan = bench.fanout_plan(2, analyses, layers, images=10, depth={"a": 0.5, "b": 0.75})
    assert plan["analyses"]["ablation"]["work_per_trial"] == 4 * 15
    assert plan["analyses"]["selectivity"]["work_per_trial"] == 20


def test_the_papers_case(bench):
    plan = bench.paper_plan()
    rows = plan["analyses"]
    # Per trial: selectivity 3 + 1, robustness 15 x 5 + PGD + 1, ablation, orientation and
    # gradients 4 + 1 each; 75 trials.
    assert [rows[n]["tasks_per_trial"] for n in rows] == [4, 77, 5, 5, 5]
    assert plan["tasks"] == 75 * 96 == 7200
    # ResNet-50: 25.6 M parameters (and BatchNorm statistics) in float32
    assert 100e6 < plan["model_bytes"] < 110e6
    assert 0 < plan["largest_task_share"] < 0.01
    depth = plan["multiply_add_share_up_to"]
    assert list(depth) == [n for n in depth if n.startswith("layer")] and len(depth) == 16
    assert all(a < b for a, b in zip(list(depth.values()), list(depth.values())[1:]))
    assert 0.99 < depth["layer4.2"] < 1   # only the classifier is above it
    # Counted so, PGD (10 steps x 7 epsilons over 10,000 images) is the largest task.
    assert plan["largest_task"] == "robustness (pgd attack)"
    assert plan["largest_task_work"] == 10_000 * 7 * (10 * 3 + 1)


def test_help():
    r = subprocess.run([sys.executable, SCRIPT, "--help"], env=subprocess_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--plan-only" in r.stdout and r.stderr == ""
