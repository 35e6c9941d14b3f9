"""DeepSpeed in bf16, in both memory layouts, trains as DDP in bf16 does (one process, CPU).

bf16 under DeepSpeed is torch.autocast over float32 weights (seltrain/engine.py says why: with
bf16 weights and float32 running statistics, CUDA's channels-first BatchNorm backward fails).
On one process ZeRO-1 changes no number, so the DeepSpeed run must equal the DDP run bitwise:
the same losses, the same weights, the same float32 running statistics, and the same test
accuracy. Channels-last also holds the DeepSpeed path that hands DeepSpeed contiguous weights
(its initialize broadcasts byte views of them) while the activations stay channels-last.

The runs share one subprocess (DeepSpeed leaves a process-wide group behind), DDP first.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers import REPO, subprocess_env, torch_extensions_dir

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]

SCRIPT = r"""
import json, sys, torch
from seltrain.config import load_config
from seltrain.distributed import DistContext
from seltrain.metrics import NullSink
from seltrain.trainer import Trainer

out, seen = sys.argv[1], {}
for layout in ("cf", "cl"):
    for engine in ("ddp", "deepspeed"):
        cfg = load_config("configs/synthetic.yaml", [
            "data.synthetic.train_size=256", "data.synthetic.test_size=64", "data.val_size=0",
            "data.synthetic.image_size=16", "train.batch_size=32",
            "train.max_steps_per_epoch=3", f"train.engine={engine}", "train.bf16=true",
            f"train.channels_last={layout == 'cl'}", "selectivity.alpha=-1",
            "run.progress=false", "run.tensorboard=false", f"run.out_dir={out}"])
        tr = Trainer(cfg, DistContext())
        m = tr.engine.network
        acts = []
        hook = m.layer1[0].register_forward_hook(lambda _m, _i, o: acts.append(
            [str(o.dtype), o.is_contiguous(memory_format=torch.channels_last)]))
        before = m.bn1.running_mean.clone()
        stats, _ = tr.train_epoch(0, NullSink(), 1)
        hook.remove()
        torch.save({k: v.detach().clone() for k, v in m.state_dict().items()},
                   f"{out}/{engine}_{layout}.pt")
        seen[f"{engine}_{layout}"] = {
            "loss": stats["train_loss"], "si": stats["train_batch_si"],
            "acc": tr.evaluate(tr.data.test)["acc"], "act": acts[0],
            "weight": str(m.conv1.weight.dtype), "stats": str(m.bn1.running_mean.dtype),
            "moved": bool((m.bn1.running_mean != before).any())}
print(json.dumps(seen))
"""


def test_deepspeed_bf16_trains_as_ddp_bf16_in_both_layouts(tmp_path):
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO,
                       env=subprocess_env(TORCH_EXTENSIONS_DIR=torch_extensions_dir()),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    for layout in ("cf", "cl"):
        ddp, ds = seen[f"ddp_{layout}"], seen[f"deepspeed_{layout}"]
        assert ds["act"] == ["torch.bfloat16", layout == "cl"]  # autocast on, layout kept
        assert ds["weight"] == ds["stats"] == "torch.float32" and ds["moved"]
        assert ds["si"] > 0 and ds == ddp, layout
        ddp_state, ds_state = (torch.load(tmp_path / f"{e}_{layout}.pt", weights_only=True)
                               for e in ("ddp", "deepspeed"))
        assert ds_state.keys() == ddp_state.keys()
        for k, v in ddp_state.items():
            assert torch.equal(ds_state[k], v), (layout, k)
