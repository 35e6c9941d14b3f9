"""seltrain/engine.py's deepspeed_config: seltrain owns the precision keys. bf16 is
torch.autocast over float32 weights (DeepSpeed's torch_autocast section); DeepSpeed's own bf16
mode is always off."""
from __future__ import annotations

import json
import os

import pytest

from helpers import REPO
from seltrain.config import load_config
from seltrain.engine import deepspeed_config
from seltrain.errors import ConfigError


def _cfg(*overrides):
    return load_config(None, ["train.engine=deepspeed", *overrides]).train


@pytest.mark.parametrize("bf16", [True, False])
def test_shipped_recipes_train_bf16_under_autocast(bf16):
    for stage in (0, 1, 2):
        path = os.path.join(REPO, "configs", "deepspeed", f"zero{stage}_bf16.json")
        said = []
        cfg = deepspeed_config(_cfg(f"train.deepspeed_config={path}", f"train.bf16={bf16}"),
                               2, say=said.append)
        assert cfg["torch_autocast"] == {"enabled": bf16, "dtype": "bfloat16"}
        assert cfg["bf16"] == {"enabled": False}
        assert cfg["zero_optimization"]["stage"] == stage
        # The recipes ask for autocast: only train.bf16=false contradicts them.
        assert len(said) == (0 if bf16 else 1), said


def test_deepspeed_bf16_mode_is_turned_off_with_one_line(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}))
    said = []
    cfg = deepspeed_config(_cfg(f"train.deepspeed_config={path}", "train.bf16=true"), 1,
                           say=said.append)
    assert cfg["bf16"] == {"enabled": False}
    assert cfg["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert said == [f"seltrain: {path} enables DeepSpeed's bf16 mode; seltrain trains bf16 "
                    "with torch.autocast over float32 weights (train.bf16, the torch_autocast "
                    "section), so bf16.enabled is set false"]
    default = deepspeed_config(_cfg("train.bf16=false"), 1, say=said.append)
    assert default["torch_autocast"]["enabled"] is False and default["bf16"]["enabled"] is False


def test_another_autocast_dtype_is_refused():
    t = _cfg()
    t.deepspeed_inline = {"torch_autocast": {"enabled": True, "dtype": "float16"}}
    with pytest.raises(ConfigError, match="torch_autocast.dtype='float16'; seltrain trains in "
                                          r"fp32 or bf16 \(train.bf16\): remove the dtype"):
        deepspeed_config(t, 1)
