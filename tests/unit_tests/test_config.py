"""seltrain/config.py: recipes load into typed dataclasses, overrides apply after the file in
order, `config show` prints a recipe that loads back to the same one, every numeric key is
held to its range (a value just outside refused in one line naming the key and the range, one
just inside taken as given), and every config mistake is one line and exit code 2."""
import dataclasses
import glob
import os
import typing

import pytest

from helpers import REPO, run_cli
from seltrain.cli import main
from seltrain.config import Config, config_from_dict, load_config
from seltrain.errors import ConfigError

RECIPES = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


def _err(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("path", RECIPES)
def test_every_shipped_recipe_loads_and_states_provenance(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    with open(path) as f:
        head = f.read(2000).lower()
    assert "provenance" in head, f"{path} must say where its hyperparameters come from"


def test_required_keys_exist():
    cfg = load_config(None, ["data.dataset=cifar10", "data.root=/x", "model.arch=resnet56",
                             "selectivity.alpha=-2.5", "selectivity.layers=[layer1.0]",
                             "selectivity.eps=1e-6", "train.epochs=3", "train.batch_size=32",
                             "train.lr=0.2", "train.seed=7", "run.out_dir=/o", "run.name=n"])
    assert (cfg.data.dataset, cfg.data.root, cfg.model.arch) == ("cifar10", "/x", "resnet56")
    assert cfg.selectivity.alpha == -2.5 and cfg.selectivity.layers == ["layer1.0"]
    assert cfg.selectivity.eps == 1e-6  # "1e-6" is a YAML string; float fields accept it
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.seed) == (3, 32,
                                                                                       0.2, 7)
    assert cfg.run_dir() == "/o/n"


def test_a_recipe_file_is_read_into_its_sections_and_overrides_apply_after_it_in_order(
        tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model:\n  arch: vgg16_bn\ntrain:\n  lr: 0.2\n  milestones: [2, 4]\n"
                 "  epochs: 6\nselectivity:\n  alpha: -3\n  layers: [features.2]\n"
                 "data:\n  synthetic:\n    image_size: 8\n")
    cfg = load_config(str(p), ["train.lr=0.3", "train.epochs=9", "train.lr=0.4"])
    assert cfg.model.arch == "vgg16_bn" and cfg.selectivity.layers == ["features.2"]
    assert cfg.train.lr == 0.4 and cfg.train.epochs == 9  # the last override of a key wins
    assert cfg.train.milestones == [2, 4] and cfg.data.synthetic.image_size == 8
    assert cfg.selectivity.alpha == -3.0 and type(cfg.selectivity.alpha) is float  # YAML's -3
    # Every key the file and the overrides leave out keeps its default.
    defaults = Config()
    assert cfg.train.momentum == defaults.train.momentum
    assert cfg.data.dataset == defaults.data.dataset and cfg.run == defaults.run


@pytest.mark.parametrize("path", RECIPES)
def test_config_show_prints_a_recipe_that_loads_back_to_the_same(path, tmp_path, capsys):
    assert main(["config", "show", path, "train.lr=0.05", "selectivity.alpha=-2"]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    again = load_config(str(shown))
    assert again == load_config(path, ["train.lr=0.05", "selectivity.alpha=-2"])
    assert (again.train.lr, again.selectivity.alpha) == (0.05, -2.0)


def test_unknown_key_suggests(capsys):
    code, err = _err(capsys, "config", "show", "configs/synthetic.yaml", "train.lrr=0.1")
    assert code == 2
    assert err.count("\n") == 0
    assert "unknown key 'train.lrr'" in err and "did you mean 'train.lr'" in err


def test_unknown_key_in_file_names_the_file(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epoch: 3\n")
    code, err = _err(capsys, "config", "show", str(p))
    assert code == 2 and str(p) in err and "did you mean 'train.epochs'" in err


def test_wrong_type(capsys):
    code, err = _err(capsys, "config", "show", "configs/synthetic.yaml", "train.epochs=lots")
    assert code == 2 and "train.epochs must be int, got 'lots'" in err


def test_missing_file(capsys):
    code, err = _err(capsys, "train", "configs/nope.yaml")
    assert code == 2 and "config file not found: configs/nope.yaml" in err


def test_unknown_model_and_dataset(capsys):
    code, err = _err(capsys, "config", "show", "configs/synthetic.yaml", "model.arch=resnet2")
    assert code == 2 and "unknown model 'resnet2'" in err and "did you mean 'resnet20'" in err
    code, err = _err(capsys, "config", "show", "configs/synthetic.yaml", "data.dataset=cifar")
    assert code == 2 and "unknown dataset 'cifar'" in err and "cifar10" in err


def test_bad_layer_lists_valid_names(tmp_path):
    # Through a real subprocess: exit status 2, one line on stderr, no traceback.
    r = run_cli("train", "configs/synthetic.yaml", "selectivity.layers=[layer9.0]",
                f"run.out_dir={tmp_path}", "run.progress=false")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "no layer 'layer9.0'" in lines[0] and "layer1.0" in lines[0] and "layer3.2" in lines[0]


def test_override_syntax(capsys):
    code, err = _err(capsys, "config", "show", "configs/synthetic.yaml", "train.lr")
    assert code == 2 and "key.sub=value" in err


def test_config_show_prints_resolved(capsys):
    assert main(["config", "show", "configs/synthetic.yaml", "selectivity.alpha=-3"]) == 0
    out = capsys.readouterr().out
    assert "alpha: -3.0" in out and "arch: resnet20" in out


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="train.milestones must be increasing"):
        load_config(None, ["train.milestones=[5,2]"])
    with pytest.raises(ConfigError, match=r"run.keep_epochs must be increasing epochs, each "
                       r"below train.epochs=10 \(epochs count from 0\), got \[2, 2\]"):
        load_config(None, ["run.keep_epochs=[2,2]"])
    with pytest.raises(ConfigError, match="data.val_size"):
        load_config(None, ["data.val_size=1.5"])


def test_deepspeed_launcher_local_rank_argument_is_accepted(capsys):
    # `deepspeed --module seltrain` runs `python -m seltrain --local_rank=N train ...`.
    assert main(["--local_rank=1", "config", "show", "configs/synthetic.yaml"]) == 0
    assert "arch: resnet20" in capsys.readouterr().out


# --------------------------------------------------------------------------------- value ranges

MAX_WORKERS = max(32, 4 * len(os.sched_getaffinity(0)))
WORKERS = f"in [0, {MAX_WORKERS}] on this machine (4 per CPU, at least 32)"

# Each numeric key: a value just outside its range, one just inside, and the range as the error
# states it (written here, not read from config.RANGES, so the test holds the config to them).
EDGES = [
    ("data.val_size", -1, 0, "a count >= 0 or a fraction in [0, 1)"),
    ("data.val_size", 1.0, 0.999, "a count >= 0 or a fraction in [0, 1)"),
    ("data.split_seed", -1, 0, ">= 0"),
    ("data.num_workers", -1, 0, WORKERS),
    ("data.num_workers", MAX_WORKERS + 1, MAX_WORKERS, WORKERS),
    ("data.limit_train", 0, 1, ">= 1 or null"),
    ("data.image_size", 0, 1, ">= 1 or null"),
    ("data.synthetic.num_classes", 1, 2, ">= 2"),
    ("data.synthetic.image_size", 3, 4, ">= 4"),
    ("data.synthetic.channels", 2, 1, "1 or 3"),
    ("data.synthetic.channels", 4, 3, "1 or 3"),
    ("data.synthetic.train_size", 0, 1, ">= 1"),
    ("data.synthetic.test_size", 0, 1, ">= 1"),
    ("data.synthetic.seed", -1, 0, ">= 0"),
    ("selectivity.alpha", "inf", -1e6, "a finite number"),
    ("selectivity.alpha", "-inf", 1e6, "a finite number"),
    ("selectivity.eps", 0, 1e-12, "> 0"),
    ("model.dropout", -0.1, 0.0, "in [0, 1) or null (the architecture's own)"),
    ("model.dropout", 1.0, 0.99, "in [0, 1) or null (the architecture's own)"),
    ("selectivity.alpha_schedule.start_epoch", -1, 0, ">= 0"),
    ("selectivity.alpha_schedule.end_epoch", -1, 0, ">= 0"),
    ("selectivity.alpha_schedule.initial", "inf", 0.0, "a finite number"),
    ("train.epochs", 0, 1, ">= 1"),
    ("train.batch_size", 0, 1, ">= 1"),
    ("train.lr", 0, 1e-9, "> 0"),
    ("train.momentum", -0.01, 0, "in [0, 1)"),
    ("train.momentum", 1, 0.999, "in [0, 1)"),
    ("train.weight_decay", -1e-4, 0, ">= 0"),
    ("train.milestones", [0, 3], [1, 3], "a list of epochs >= 1"),
    ("train.gamma", 0, 1e-6, "> 0"),
    ("train.warmup_epochs", -0.5, 0, ">= 0"),
    ("train.label_smoothing", -0.01, 0, "in [0, 1)"),
    ("train.label_smoothing", 1, 0.999, "in [0, 1)"),
    ("train.grad_clip", 0, 1e-6, "> 0 or null (no clipping)"),
    ("train.seed", -1, 0, ">= 0"),
    ("train.eval_batch_size", 0, 1, ">= 1"),
    ("train.max_steps_per_epoch", 0, 1, ">= 1 or null (whole epochs)"),
    ("run.keep_epochs", [-1, 3], [0, 3], "a list of epochs >= 0 (epochs count from 0)"),
]
NULLABLE = ["model.dropout", "data.limit_train", "data.image_size", "train.grad_clip",
            "train.max_steps_per_epoch"]


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


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _text(value) -> str:
    return f"[{', '.join(map(str, value))}]" if isinstance(value, list) else str(value)


def test_every_numeric_key_has_its_edges_here():
    assert set(_numeric_keys()) == {key for key, *_ in EDGES}


@pytest.mark.parametrize("key,outside,inside,allowed", EDGES,
                         ids=[f"{k}={_text(o)}" for k, o, *_ in EDGES])
def test_each_range_is_enforced_just_outside_and_not_just_inside(key, outside, inside, allowed):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={_text(outside)}"])
    msg = str(e.value)
    assert msg.startswith(f"{key} must be {allowed}, got ") and msg.count("\n") == 0, msg
    assert msg.endswith(f"(override '{key}={_text(outside)}')"), msg
    assert _get(load_config(None, [f"{key}={_text(inside)}"]), key) == inside


def test_a_recipe_file_is_held_to_the_ranges_too(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  momentum: 1.0\n")
    with pytest.raises(ConfigError, match=rf"^train.momentum must be in \[0, 1\), got 1.0 "
                                          rf"\(in {p}\)$"):
        load_config(str(p))


@pytest.mark.parametrize("key", NULLABLE)
def test_null_is_the_one_value_outside_the_numbers_that_these_keys_take(key):
    assert _get(load_config(None, [f"{key}=null"]), key) is None


@pytest.mark.parametrize("key", ["train.lr", "selectivity.alpha", "train.grad_clip",
                                 "data.val_size", "train.momentum", "selectivity.eps"])
@pytest.mark.parametrize("bad", ["nan", ".nan", "inf", "-.inf"])
def test_nan_and_inf_are_refused(key, bad):
    with pytest.raises(ConfigError, match=rf"^{key} must be a finite number, got "):
        load_config(None, [f"{key}={bad}"])


def test_saved_config_names_its_source():
    data = Config().to_dict()
    data["train"]["lr"] = -1.0
    with pytest.raises(ConfigError, match=r"\(space.train.lr in x.yaml\)$"):
        config_from_dict(data, where="space.train.lr in x.yaml")
