"""Recipes load into typed dataclasses; every config mistake is one line and exit code 2."""
import glob
import os

import pytest

from helpers import REPO, run_cli
from seltrain.cli import main
from seltrain.config import Config, load_config
from seltrain.errors import ConfigError


def _err(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
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


def test_quickstart_recipe_values():
    cfg = load_config(os.path.join(REPO, "configs/quickstart.yaml"))
    assert cfg.data.dataset == "fashion_mnist" and cfg.model.arch == "resnet20"
    assert cfg.selectivity.alpha == -1.0 and cfg.train.epochs == 3


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
    with pytest.raises(ConfigError, match="data.val_size"):
        load_config(None, ["data.val_size=1.5"])


def test_deepspeed_launcher_local_rank_argument_is_accepted(capsys):
    # `deepspeed --module seltrain` runs `python -m seltrain --local_rank=N train ...`.
    assert main(["--local_rank=1", "config", "show", "configs/synthetic.yaml"]) == 0
    assert "arch: resnet20" in capsys.readouterr().out
