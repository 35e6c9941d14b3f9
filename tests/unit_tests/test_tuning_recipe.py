"""Search recipes (seltrain.tuning.recipe) in-process: the space a recipe enumerates, exactly.

signed_log grids, grid x seeds in Tune's order, sampled keys shown as their distribution and
repeated num_samples times, each trial's typed Config, the trial folder names, and the same
space handed to Tune (param_space). No subprocess, no Ray started.
"""
import os
import random

import pytest
import yaml

from helpers import REPO
from seltrain.config import Config
from seltrain.errors import ConfigError
from seltrain.tuning import LogGrid, SpaceSpec, enumerate_trials, load_search, trial_config
from seltrain.tuning.recipe import trial_name

SYNTH = os.path.join(REPO, "configs", "synthetic.yaml")


def _recipe(tmp_path, **fields):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"base": SYNTH, "storage": str(tmp_path / "exp"), **fields}))
    return load_search(str(path))


def test_signed_log_values():
    assert SpaceSpec(signed_log=LogGrid()).values() == \
        [-100.0, -10.0, -1.0, -0.1, 0.0, 0.1, 1.0, 10.0, 100.0]
    # 1000 ** 0.5 = 31.6227...: three significant digits; no zero, negative side only.
    assert SpaceSpec(signed_log=LogGrid(min=1, max=1000, num=3, zero=False,
                                        signs="negative")).values() == [-1000.0, -31.6, -1.0]
    assert SpaceSpec(signed_log=LogGrid(min=0.5, max=0.5, num=1,
                                        signs="positive")).values() == [0.0, 0.5]
    assert SpaceSpec(uniform=[0.0, 1.0]).values() is None


def test_grid_times_seeds_in_tunes_order_and_typed_once(tmp_path):
    recipe, base = _recipe(tmp_path, seeds=[3, 7], num_samples=5, space={
        "selectivity.alpha": {"signed_log": {"min": 1, "max": 1000, "num": 3, "zero": False,
                                             "signs": "negative"}},
        "train.lr": [0.1, 0.01]})
    assert isinstance(base, Config) and base.train.epochs == 2 and base.train.lr == 0.05
    assert not recipe.sampled()  # num_samples only repeats sampled keys: 12 trials, not 60
    a, lr, s = "selectivity.alpha", "train.lr", "train.seed"
    want = [(-1000.0, 0.1, 3), (-1000.0, 0.1, 7), (-1000.0, 0.01, 3), (-1000.0, 0.01, 7),
            (-31.6, 0.1, 3), (-31.6, 0.1, 7), (-31.6, 0.01, 3), (-31.6, 0.01, 7),
            (-1.0, 0.1, 3), (-1.0, 0.1, 7), (-1.0, 0.01, 3), (-1.0, 0.01, 7)]
    assert enumerate_trials(recipe) == [{a: x, lr: y, s: z} for x, y, z in want]
    assert recipe.keys == [a, lr, s]
    # One trial's Config: the base with its values set, typed (an int alpha becomes a float);
    # the base is not touched.
    cfg = trial_config(base, {a: -31.6, lr: 0.01, s: 7})
    assert (cfg.selectivity.alpha, cfg.train.lr, cfg.train.seed) == (-31.6, 0.01, 7)
    assert cfg.data.synthetic.image_size == 32 and cfg.train.epochs == 2
    assert (base.selectivity.alpha, base.train.lr, base.train.seed) == (0.0, 0.05, 0)
    one = trial_config(base, {a: -1})
    assert one.selectivity.alpha == -1.0 and isinstance(one.selectivity.alpha, float)
    with pytest.raises(ConfigError, match=r"unknown key 'selectivity.alhpa' \(trial\).*"
                                          r"did you mean 'selectivity.alpha'"):
        trial_config(base, {"selectivity.alhpa": 1.0})


def test_sampled_keys_show_their_distribution_num_samples_times(tmp_path):
    recipe, _ = _recipe(tmp_path, seeds=[0, 1], num_samples=3, space={
        "selectivity.alpha": {"signed_loguniform": [0.1, 10]},
        "train.epochs": [1, 2]})
    assert recipe.sampled()
    a, e, s = "selectivity.alpha", "train.epochs", "train.seed"
    # An int key's grid stays ints (as floats, train.epochs would refuse them).
    assert [(v, type(v)) for v in recipe.space[e].values()] == [(1, int), (2, int)]
    dist = "signed_loguniform(0.1, 10.0)"
    one_draw = [{a: dist, e: 1, s: 0}, {a: dist, e: 1, s: 1},
                {a: dist, e: 2, s: 0}, {a: dist, e: 2, s: 1}]
    assert enumerate_trials(recipe) == one_draw * 3


def test_param_space_is_the_enumerated_space(tmp_path):
    pytest.importorskip("ray")
    from seltrain.tuning.trials import param_space, signed_loguniform

    recipe, _ = _recipe(tmp_path, seeds=[3, 7], space={
        "selectivity.alpha": {"signed_log": {"min": 1, "max": 100, "num": 2}},
        "train.lr": {"loguniform": [0.001, 0.1]}})
    space = param_space(recipe)
    assert list(space) == ["selectivity.alpha", "train.lr", "train.seed"]
    assert space["selectivity.alpha"] == {"grid_search": [-100.0, -1.0, 0.0, 1.0, 100.0]}
    assert space["train.seed"] == {"grid_search": [3, 7]}
    assert (space["train.lr"].lower, space["train.lr"].upper) == (0.001, 0.1)
    # signed_loguniform: both signs, magnitudes in [lo, hi], four significant digits.
    random.seed(0)
    draws = [signed_loguniform(0.1, 10.0) for _ in range(2000)]
    assert all(0.1 <= abs(v) <= 10.0 and float(f"{v:.4g}") == v for v in draws)
    assert 900 < sum(v < 0 for v in draws) < 1100
    assert min(map(abs, draws)) < 0.11 and max(map(abs, draws)) > 9.0


def test_trial_names_are_the_folder_names():
    keys = ["selectivity.alpha", "data.dataset", "train.seed"]
    config = {"selectivity.alpha": -31.6, "data.dataset": "a/b", "train.seed": 0, "x": 1}
    assert trial_name(config, keys, "b1c2d_00001") == "alpha-31.6_dataseta-b_seed0_b1c2d_00001"
    assert trial_name({"selectivity.alpha": 100.0, "train.seed": 2}, keys, "x") == \
        "alpha100_seed2_x"
