"""Every numeric recipe key has a checked range; nan/inf are refused at config time."""
import dataclasses
import typing

import pytest

from seltrain.config import RANGES, Config, config_from_dict, load_config
from seltrain.errors import ConfigError

# Keys with no obvious range (any value is meaningful).
UNBOUNDED: set[str] = set()

# A value just outside each range; the message must name the key and the allowed range.
OUTSIDE = {
    "data.val_size": -1, "data.split_seed": -1, "data.num_workers": -1,
    "data.limit_train": 0, "data.image_size": 0, "data.synthetic.num_classes": 1,
    "data.synthetic.image_size": 3, "data.synthetic.channels": 2,
    "data.synthetic.train_size": 0, "data.synthetic.test_size": 0, "data.synthetic.seed": -1,
    "selectivity.eps": 0, "train.epochs": 0, "train.batch_size": 0, "train.lr": 0,
    "train.momentum": 1, "train.weight_decay": -1e-4, "train.milestones": [0, 3],
    "train.gamma": 0, "train.warmup_epochs": -0.5, "train.label_smoothing": 1,
    "train.grad_clip": 0, "train.seed": -1, "train.eval_batch_size": 0,
    "train.max_steps_per_epoch": 0,
}


def _numeric_keys(cls=Config, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _numeric_keys(tp, f"{prefix}{f.name}.")
            continue
        args = set(typing.get_args(tp)) | {tp}
        if args & {int, float, list[int], list[float]} and tp is not bool:
            yield f"{prefix}{f.name}"


def test_every_numeric_key_has_a_range():
    keys = set(_numeric_keys())
    assert keys - set(RANGES) - UNBOUNDED == set(), "give these keys a range in config.RANGES"
    assert set(RANGES) <= keys


@pytest.mark.parametrize("key", sorted(OUTSIDE))
def test_value_outside_the_range_names_key_and_range(key):
    value = OUTSIDE[key]
    what = RANGES[key][0]
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={value}"])
    msg = str(e.value)
    assert msg.startswith(f"{key} must be {what}, got ") and f"override '{key}=" in msg, msg


def test_every_range_has_an_outside_value():
    assert set(OUTSIDE) == set(RANGES) - {"selectivity.alpha"}


@pytest.mark.parametrize("key", ["train.lr", "selectivity.alpha", "train.grad_clip",
                                 "data.val_size", "train.momentum", "selectivity.eps"])
@pytest.mark.parametrize("bad", ["nan", ".nan", "inf", "-.inf"])
def test_nan_and_inf_are_refused(key, bad):
    with pytest.raises(ConfigError, match=rf"^{key} must be a finite number, got "):
        load_config(None, [f"{key}={bad}"])


def test_values_on_the_edge_pass():
    cfg = load_config(None, ["train.momentum=0", "train.label_smoothing=0", "train.grad_clip=null",
                             "data.limit_train=1", "train.max_steps_per_epoch=1",
                             "data.num_workers=0", "selectivity.alpha=-1e6"])
    assert cfg.train.grad_clip is None and cfg.train.max_steps_per_epoch == 1


def test_saved_config_names_its_source():
    data = Config().to_dict()
    data["train"]["lr"] = -1.0
    with pytest.raises(ConfigError, match=r"\(space.train.lr in x.yaml\)$"):
        config_from_dict(data, where="space.train.lr in x.yaml")
