"""seltrain/alpha_schedule.py: alpha per epoch, its checks, and a search that varies it."""
import os

import pytest

from helpers import REPO
from seltrain.alpha_schedule import AlphaScheduleConfig, alpha_at, describe, name_suffix
from seltrain.config import load_config
from seltrain.errors import ConfigError


def test_step_is_the_reference_two_level_schedule():
    # The reference's "0*5 -20*15": alpha 0 for epochs 0-4, -20 for epochs 5-19.
    s = AlphaScheduleConfig(kind="step", start_epoch=5)
    assert [alpha_at(s, -20, e) for e in range(20)] == [0.0] * 5 + [-20.0] * 15
    assert describe(s, -20) == "0 until epoch 5, then -20"


def test_ramp_is_linear_between_its_epochs_and_flat_outside():
    s = AlphaScheduleConfig(kind="ramp", start_epoch=2, end_epoch=6, initial=1.0)
    assert [alpha_at(s, -7, e) for e in range(9)] == [1.0, 1.0, 1.0, -1.0, -3.0, -5.0, -7.0,
                                                      -7.0, -7.0]


def test_constant_is_alpha_every_epoch():
    assert {alpha_at(AlphaScheduleConfig(), -3, e) for e in range(50)} == {-3.0}


def test_run_names_tell_schedules_apart():
    base = ["selectivity.alpha=-10", "train.epochs=40"]
    names = {load_config(None, base + extra).run_name() for extra in (
        [], ["selectivity.alpha_schedule.kind=step", "selectivity.alpha_schedule.start_epoch=30"],
        ["selectivity.alpha_schedule.kind=ramp", "selectivity.alpha_schedule.start_epoch=10",
         "selectivity.alpha_schedule.end_epoch=30"])}
    assert names == {"resnet20_synthetic_alpha-10_seed0",
                     "resnet20_synthetic_alpha-10_from30_seed0",
                     "resnet20_synthetic_alpha-10_ramp10-30_seed0"}
    assert name_suffix(AlphaScheduleConfig(kind="step", start_epoch=3, initial=-1)) == \
        "_from3i-1"


@pytest.mark.parametrize("overrides,message", [
    (["kind=ramp", "start_epoch=30", "end_epoch=10"],
     r"^selectivity.alpha_schedule: epochs out of order, start_epoch 30 is not before "
     r"end_epoch 10; give start_epoch < end_epoch$"),
    (["kind=step", "start_epoch=40"],
     r"^selectivity.alpha_schedule.start_epoch=40 is past the run's last epoch \(39;"),
    (["kind=ramp", "start_epoch=0", "end_epoch=40"],
     r"^selectivity.alpha_schedule.end_epoch=40 is past the run's last epoch \(39;"),
    (["start_epoch=30"], r"^selectivity.alpha_schedule.kind is constant, which ignores"),
    (["kind=step", "start_epoch=3", "end_epoch=9"],
     r"^selectivity.alpha_schedule.kind is step, which ignores end_epoch \(9\)"),
    (["kind=steps"], r"^unknown value 'steps' for selectivity.alpha_schedule.kind .*did you "
                     r"mean 'step'"),
])
def test_bad_schedules_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, ["train.epochs=40"] +
                    [f"selectivity.alpha_schedule.{o}" for o in overrides])
    assert "\n" not in str(e.value)


def test_the_late_search_recipe_varies_the_schedule():
    """tune/alpha_late.yaml: alpha on the paper's grid times three start epochs; every trial's
    config carries its own schedule."""
    from seltrain.tuning.recipe import enumerate_trials, load_search, trial_config

    recipe, base = load_search(os.path.join(REPO, "tune/alpha_late.yaml"))
    trials = enumerate_trials(recipe)
    starts = sorted({t["selectivity.alpha_schedule.start_epoch"] for t in trials})
    assert starts == [0, 5, 30]
    assert base.selectivity.alpha_schedule.kind == "step"
    one = trial_config(base, {"selectivity.alpha": -10.0,
                              "selectivity.alpha_schedule.start_epoch": 30, "train.seed": 1})
    assert alpha_at(one.selectivity.alpha_schedule, one.selectivity.alpha, 29) == 0.0
    assert alpha_at(one.selectivity.alpha_schedule, one.selectivity.alpha, 30) == -10.0


def test_the_late_search_dry_run_lists_its_135_trials():
    """~3 s (a subprocess): `seltrain tune --search alpha_late --dry-run`, the command
    docs/REPRODUCE.md gives, prints 15 alphas x start epochs 0, 5, 30 x seeds 0-2."""
    import re

    from helpers import run_cli

    r = run_cli("tune", "--search", "alpha_late", "--dry-run", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "135 trials x 200 epochs" in r.stdout
    rows = re.findall(r"^\s*\d+\s+(-?[\d.]+)\s+(\d+)\s+(\d+)\s*$", r.stdout, re.M)
    assert len(rows) == 135 and len({a for a, _, _ in rows}) == 15
    assert {int(s) for _, s, _ in rows} == {0, 5, 30} and {x for *_, x in rows} == set("012")


def test_window_is_alpha_inside_and_initial_outside():
    # Epochs 1-2 regularized at -2, 0 before and after: the reference's "0*1 -2*2 0*1".
    s = AlphaScheduleConfig(kind="window", start_epoch=1, end_epoch=3)
    assert [alpha_at(s, -2, e) for e in range(4)] == [0.0, -2.0, -2.0, 0.0]
    assert describe(s, -2) == "-2 in epochs 1-2, 0 outside"
    # Early only ("-20*5 0*15"): a window from epoch 0; initial may be non-zero.
    early = AlphaScheduleConfig(kind="window", start_epoch=0, end_epoch=5, initial=0.5)
    assert [alpha_at(early, -20, e) for e in range(7)] == [-20.0] * 5 + [0.5, 0.5]
    assert name_suffix(early) == "_win0-5i0.5"


def test_a_window_may_run_to_the_end_and_is_named():
    # end_epoch is excluded, so end_epoch == train.epochs regularizes up to the last epoch.
    cfg = load_config(None, ["train.epochs=40", "selectivity.alpha=-10",
                             "selectivity.alpha_schedule.kind=window",
                             "selectivity.alpha_schedule.start_epoch=30",
                             "selectivity.alpha_schedule.end_epoch=40"])
    s = cfg.selectivity.alpha_schedule
    assert [alpha_at(s, -10, e) for e in (29, 30, 39)] == [0.0, -10.0, -10.0]
    assert cfg.run_name() == "resnet20_synthetic_alpha-10_win30-40_seed0"


@pytest.mark.parametrize("overrides,message", [
    (["kind=window", "start_epoch=5", "end_epoch=5"],
     r"^selectivity.alpha_schedule: epochs out of order, start_epoch 5 is not before "
     r"end_epoch 5; give start_epoch < end_epoch$"),
    (["kind=window", "start_epoch=0", "end_epoch=41"],
     r"^selectivity.alpha_schedule.end_epoch=41 is past the run's end \(train.epochs=40; .*"
     r"give an end_epoch of at most 40$"),
    (["kind=window"],
     r"^selectivity.alpha_schedule: epochs out of order, start_epoch 0 is not before "
     r"end_epoch 0"),
])
def test_bad_windows_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, ["train.epochs=40"] +
                    [f"selectivity.alpha_schedule.{o}" for o in overrides])
    assert "\n" not in str(e.value)


def test_a_search_varies_the_window_through_its_scalar_keys():
    """A search over window starts with end_epoch fixed: each trial's alpha per epoch."""
    from seltrain.tuning.recipe import trial_config

    base = load_config(None, ["train.epochs=10", "selectivity.alpha=-4",
                              "selectivity.alpha_schedule.kind=window",
                              "selectivity.alpha_schedule.start_epoch=0",
                              "selectivity.alpha_schedule.end_epoch=5"])
    one = trial_config(base, {"selectivity.alpha_schedule.start_epoch": 3,
                              "selectivity.alpha": -1.0})
    assert [alpha_at(one.selectivity.alpha_schedule, one.selectivity.alpha, e)
            for e in range(10)] == [0.0] * 3 + [-1.0] * 2 + [0.0] * 5


def test_seeds_and_grid_narrow_a_search_to_try_it_small(capsys):
    """`--grid` replaces a searched key's values, `--seeds` the seeds: the dry run lists
    exactly the 2 alphas x 2 start epochs x seed 0, in Tune's order, each value typed as the
    recipe types it (alpha 0 -> 0.0, a start epoch an int)."""
    import re

    from seltrain.cli import main

    assert main(["tune", "--search", "alpha_late", "--grid", "selectivity.alpha=0,-1",
                 "--grid", "selectivity.alpha_schedule.start_epoch=0,1", "--seeds", "0",
                 "--set", "train.epochs=2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 trials x 2 epochs = 8 trial-epochs" in out
    rows = re.findall(r"^\s*\d+\s+(-?[\d.]+)\s+(\d+)\s+(\d+)\s*$", out, re.M)
    assert rows == [("0.0", "0", "0"), ("0.0", "1", "0"), ("-1.0", "0", "0"),
                    ("-1.0", "1", "0")]
    # --seeds alone keeps the recipe's grid: bn_dropout's 2 x 2 with seeds 0 and 1 = 8 trials.
    assert main(["tune", "--search", "bn_dropout", "--seeds", "0,1", "--dry-run"]) == 0
    rows = re.findall(r"^\s*\d+\s+(vgg16\w*)\s+([\d.]+)\s+(\d+)\s*$",
                      capsys.readouterr().out, re.M)
    assert rows == [(a, p, s) for a in ("vgg16", "vgg16_bn") for p in ("0.0", "0.5")
                    for s in "01"]
