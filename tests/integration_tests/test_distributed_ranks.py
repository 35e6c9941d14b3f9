"""Real 2-rank gloo groups: global-SI gradient equivalence (DDP and DeepSpeed ZeRO-1), the
shrunken payloads, exact sharded evaluation, and a rank that cannot join.

The multi-rank half runs this file as a torchrun worker (``python -m torch.distributed.run
--standalone --nproc_per_node 2 test_distributed_ranks.py equivalence OUT``); each rank writes
what it saw to OUT/rank{r}.pt and the tests compare those numbers with one process.

BatchNorm: the equivalence is exact only when BN does not normalise by per-rank batch
statistics. torch's SyncBatchNorm is GPU-only, so on CPU the equivalence runs with BN in eval
mode (running statistics); the regularizer, CE, probes, the all-reduce and DDP/DeepSpeed
gradient averaging are all the real training-time code.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import time

import pytest
import torch

from helpers import (REPO, TINY, evaluate_checkpoint, free_port, subprocess_env,
                     torch_extensions_dir)

ALPHA = 1.0
GLOBAL_BATCH = 32
# Uneven on purpose: 255 test samples give rank shards of 128 and 127; 127 val samples 64/63.
EVAL_CFG = TINY + ["data.synthetic.test_size=255", "data.val_size=127",
                   "train.eval_batch_size=50", "train.batch_size=32"]
GRAD_CFG = TINY + [f"selectivity.alpha={ALPHA}", f"train.batch_size={GLOBAL_BATCH}",
                   "train.weight_decay=0", "train.momentum=0", "train.bf16=false",
                   "data.augment=false"]


# --------------------------------------------------------------------------- worker side

def _loss_and_si(model, probe, x, y, k, reduce):
    from torch.nn import functional as F
    from seltrain.selectivity import selectivity_penalty

    logits = model(x)
    ce = F.cross_entropy(logits, y)
    mu_si, _ = selectivity_penalty(probe.pop(), y, k, reduce=reduce)
    return ce - ALPHA * mu_si, ce, mu_si


def _global_batch(cfg):
    from seltrain.data import DevicePreprocess, build_data

    data = build_data(cfg, batch_size=GLOBAL_BATCH)  # one process's view: the global batch
    xb, yb = next(iter(data.train))
    x, y = DevicePreprocess(data.info, torch.device("cpu"))(xb, yb)
    return x, y, data.info.num_classes


def _fresh_model(cfg, k):
    from seltrain.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model.arch, k, 3, cfg.data.synthetic.image_size)
    with torch.no_grad():  # non-trivial BN running statistics, identical on every rank
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _equivalence_worker(out: str) -> None:
    from functools import partial

    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_grad

    from seltrain import distributed
    from seltrain.config import load_config
    from seltrain.engine import DDPEngine, DeepSpeedEngine
    from seltrain.probes import Probe, resolve_layers
    from seltrain.trainer import Trainer

    torch.use_deterministic_algorithms(True)
    ctx = distributed.setup()
    r, g = ctx.rank, ctx.world_size
    res: dict = {"describe": ctx.describe()}
    cfg = load_config(None, GRAD_CFG)
    x, y, k = _global_batch(cfg)
    n = GLOBAL_BATCH // g
    xs, ys = x[r * n:(r + 1) * n], y[r * n:(r + 1) * n]
    reduce = partial(distributed.all_reduce_stats)

    def run(engine, grads_of):
        model = engine.network
        probe = Probe(model, resolve_layers(model, "blocks")).attach()
        loss, ce, si = _loss_and_si(engine.forward_model(), probe, xs, ys, k, reduce)
        engine.backward(loss)
        grads = {name: grads_of(p).detach().double().clone()
                 for name, p in model.named_parameters()}
        # The job's loss is the mean of the ranks' losses (CE over slices; SI is shared).
        mean_loss = torch.tensor([loss.item()], dtype=torch.float64)
        distributed.all_reduce_sum(mean_loss)
        engine.step()
        probe.detach()
        return {"loss": mean_loss.item() / g, "si": si.item(), "grads": grads}

    base = _fresh_model(cfg, k)
    res["ddp"] = run(DDPEngine(copy.deepcopy(base), cfg, ctx, 10), lambda p: p.grad)
    ds_cfg = load_config(None, GRAD_CFG + ["train.engine=deepspeed"])
    ds_cfg.train.deepspeed_inline = {"zero_optimization": {"stage": 1}}
    res["zero1"] = run(DeepSpeedEngine(copy.deepcopy(base), ds_cfg, ctx, 10), safe_get_full_grad)

    # sync="local": this rank's slice alone.
    probe = Probe(base, resolve_layers(base, "blocks")).attach()
    with torch.no_grad():
        _, _, si_local = _loss_and_si(base, probe, xs, ys, k, None)
    res["si_local"] = si_local.item()
    probe.detach()

    # Shrunken payloads: present-only rows and bf16, values and gradients.
    gen = torch.Generator().manual_seed(100 + r)
    k_big, widths = 50, (7, 13)
    labels = torch.randint(0, 20, (24,), generator=gen)  # classes 20..49 absent everywhere
    acts = [torch.rand(24, w, generator=gen, dtype=torch.float32).requires_grad_()
            for w in widths]
    from seltrain.selectivity import class_stats

    for mode, kw in (("dense", {}), ("present", {"present_only": True}),
                     ("bf16", {"bf16": True}),
                     # sync-free present-only: a static 30 rows (20 classes can be present)
                     ("present_static", {"present_only": True, "max_rows": 30}),
                     # the general backward (an all-reduce of the gradients)
                     ("general", {"replicated": False})):
        stats = [class_stats(a, labels, k_big) for a in acts]
        sums, counts = distributed.all_reduce_stats([s for s, _ in stats], stats[0][1], **kw)
        weight = torch.arange(1, k_big + 1, dtype=torch.float32).unsqueeze(1)
        (sum((s * weight).sum() for s in sums) + counts.sum()).backward()
        res[f"payload_{mode}"] = {"sums": [s.detach().clone() for s in sums],
                                  "counts": counts.detach().clone(),
                                  "grads": [a.grad.clone() for a in acts]}
        for a in acts:
            a.grad = None
    res["payload_local"] = {"acts": [a.detach() for a in acts], "labels": labels}
    # A bf16 payload whose class counts pass 256 (bf16 holds integers exactly up to 256):
    # 259 + 258 samples of class 0, 3 + 3 of class 1.
    many = torch.cat([torch.zeros(259 - r, dtype=torch.long), torch.ones(3, dtype=torch.long)])
    sums, counts = class_stats(torch.rand(len(many), 4, generator=gen), many, 5)
    res["bf16_counts"] = distributed.all_reduce_stats([sums], counts, bf16=True)[1]

    # The fused penalty (one [K, sum U] buffer through the all-reduce) against the per-layer
    # reference (one buffer per layer), values and gradients, in float64 and float32.
    from seltrain.selectivity import (selectivity_penalty,
                                      selectivity_penalty_per_layer_reference)

    for dtype in (torch.float64, torch.float32):
        gen = torch.Generator().manual_seed(200 + r)
        labels = torch.randint(0, 12, (24,), generator=gen)
        acts = [torch.rand(24, w, generator=gen, dtype=dtype) for w in (5, 9, 2)]
        got = {"acts": acts, "labels": labels}
        for name, fn in (("fused", selectivity_penalty),
                         ("reference", selectivity_penalty_per_layer_reference)):
            leaves = [a.clone().requires_grad_() for a in acts]
            mu, per_layer = fn(leaves, labels, 12, reduce=reduce)
            grads = torch.autograd.grad(mu + per_layer[0], leaves)
            got[name] = (mu.detach(), per_layer.detach(), [g.clone() for g in grads])
        res[f"fused_{str(dtype).split('.')[-1]}"] = got

    # The trainer's sync-free present-only path (a static 16 rows: the global batch of 16 is
    # below K = 100) against the dense payload: the same three training steps, bitwise.
    from seltrain.metrics import NullSink

    res["present_trainer"] = {}
    for present in (False, True):
        tcfg = load_config(None, TINY + [
            "data.synthetic.num_classes=100", "train.batch_size=16", "selectivity.alpha=-1",
            f"selectivity.sync_present_only={present}", "train.max_steps_per_epoch=3",
            "data.augment=false", f"run.out_dir={out}/present_{present}"])
        stats, _ = Trainer(tcfg, ctx).train_epoch(0, NullSink(), 1)
        res["present_trainer"][present] = {k: stats[k] for k in ("train_loss", "train_ce",
                                                                 "train_batch_si")}

    # Exact sharded evaluation through the trainer's own evaluate().
    trainer = Trainer(load_config(None, EVAL_CFG + [f"run.out_dir={out}/run"]), ctx)
    res["eval"] = {split: _eval_record(trainer, split) for split in ("val", "test")}
    torch.save(res, os.path.join(out, f"rank{r}.pt"))
    dist.barrier()
    distributed.teardown(ctx)


def _eval_record(trainer, split: str) -> dict:
    loader = getattr(trainer.data, split)
    ev = trainer.evaluate(loader)
    return {"acc": ev["acc"], "n": ev["n"], "si": ev["si"], "shard": len(
        loader.sharding.eval_indices(loader.indices)),
            "si_units": {k: torch.from_numpy(v) for k, v in ev["si_units"].items()}}


def _single_worker(out: str) -> None:
    """One process: the reference gradients on the concatenated batch, and evaluation."""
    from seltrain.config import load_config
    from seltrain.probes import Probe, resolve_layers
    from seltrain.trainer import Trainer

    torch.use_deterministic_algorithms(True)
    cfg = load_config(None, GRAD_CFG)
    x, y, k = _global_batch(cfg)
    model = _fresh_model(cfg, k)
    probe = Probe(model, resolve_layers(model, "blocks")).attach()
    loss, _, si = _loss_and_si(model, probe, x, y, k, None)
    loss.backward()
    res = {"loss": loss.item(), "si": si.item(),
           "grads": {n: p.grad.double().clone() for n, p in model.named_parameters()}}
    trainer = Trainer(load_config(None, EVAL_CFG + [f"run.out_dir={out}/run1"]))
    res["eval"] = {split: _eval_record(trainer, split) for split in ("val", "test")}
    torch.save(res, os.path.join(out, "single.pt"))


# --------------------------------------------------------------------------- test side

def _env(tmp_path):
    return subprocess_env(TORCH_EXTENSIONS_DIR=torch_extensions_dir(),
                          SELTRAIN_DIST_TIMEOUT=120, OMP_NUM_THREADS=1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


_CACHE: dict = {}
# The tests below that read _results() share one 2-rank torchrun run and its single-process
# reference (~25-60 s on 2 cores; the ranks also run DeepSpeed's ZeRO-1 engine): slow, deepspeed.


def _results(tmp_path_factory):
    """Run the 2-rank worker and the single-process reference once, side by side."""
    if "res" in _CACHE:
        return _CACHE["res"]
    out = str(tmp_path_factory.mktemp("dist"))
    env = _env(out)
    shm_before = set(os.listdir("/dev/shm"))
    t0 = time.time()
    single = subprocess.Popen([sys.executable, __file__, "single", out], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node", "2", __file__, "equivalence", out],
                           env=env, capture_output=True, text=True, timeout=400)
    single_out, _ = single.communicate(timeout=400)
    for leftover in set(os.listdir("/dev/shm")) - shm_before:
        if leftover.startswith("deepspeed"):
            os.unlink(os.path.join("/dev/shm", leftover))
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-5000:]
    assert single.returncode == 0, single_out[-5000:]
    res = {"single": torch.load(os.path.join(out, "single.pt"), weights_only=False),
           "ranks": [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False)
                     for r in range(2)],
           "seconds": time.time() - t0}
    _CACHE["res"] = res
    return res


@pytest.mark.slow
@pytest.mark.deepspeed
def test_rank_start_line(tmp_path_factory):
    res = _results(tmp_path_factory)
    for r, rank in enumerate(res["ranks"]):
        assert rank["describe"].startswith(f"seltrain: rank {r} of world size 2")
        assert "backend gloo, device cpu, launcher torchrun" in rank["describe"]


@pytest.mark.slow
@pytest.mark.deepspeed
def test_global_si_equals_one_process_ddp_and_zero1(tmp_path_factory):
    res = _results(tmp_path_factory)
    ref = res["single"]
    for rank in res["ranks"]:
        for engine in ("ddp", "zero1"):
            got = rank[engine]
            assert abs(got["loss"] - ref["loss"]) <= 1e-5 * abs(ref["loss"]), engine
            assert abs(got["si"] - ref["si"]) <= 1e-5 * abs(ref["si"]), engine
            assert got["grads"].keys() == ref["grads"].keys()
            worst = max(_rel(got["grads"][n], ref["grads"][n]) for n in ref["grads"])
            assert worst <= 1e-5, f"{engine}: worst parameter gradient rel. error {worst:.2e}"
    # The SI term really contributes, and the per-rank ("local") SI is a different number:
    # off by far more than the 1e-5 the global mode must meet.
    assert ref["si"] > 0.01
    for rank in res["ranks"]:
        assert abs(rank["si_local"] - ref["si"]) > 1e-3 * abs(ref["si"])


@pytest.mark.slow
@pytest.mark.deepspeed
def test_payload_present_only_exact_and_bf16_close(tmp_path_factory):
    ranks = _results(tmp_path_factory)["ranks"]
    from seltrain.selectivity import class_stats

    # Reference: the statistics of both ranks' data together, computed in this process.
    acts = [torch.cat([r["payload_local"]["acts"][i] for r in ranks]) for i in range(2)]
    labels = torch.cat([r["payload_local"]["labels"] for r in ranks])
    ref_sums = [class_stats(a, labels, 50)[0] for a in acts]
    ref_counts = class_stats(acts[0], labels, 50)[1]
    for rank in ranks:
        dense, present, bf16 = (rank[f"payload_{m}"] for m in ("dense", "present", "bf16"))
        for i in range(2):
            torch.testing.assert_close(dense["sums"][i], ref_sums[i], rtol=1e-6, atol=1e-6)
            assert torch.equal(present["sums"][i], dense["sums"][i])
            assert torch.equal(present["grads"][i], dense["grads"][i])
            # bf16 keeps 8 mantissa bits: relative error <= 2^-8 per element, and the payload
            # is only the forward; gradients of the weighted sum are exact small integers.
            torch.testing.assert_close(bf16["sums"][i], dense["sums"][i], rtol=2 ** -7,
                                       atol=1e-2)
            torch.testing.assert_close(bf16["grads"][i], dense["grads"][i], rtol=2 ** -7,
                                       atol=0)
        assert torch.equal(present["counts"], ref_counts)
        assert torch.equal(dense["counts"], ref_counts)
        assert torch.equal(bf16["counts"], ref_counts)
        # bf16 sums, float32 counts: 517 samples of one class are counted exactly (in bf16
        # the 259 of rank 0 alone would round to 260).
        assert rank["bf16_counts"].dtype == torch.float32
        assert rank["bf16_counts"].tolist() == [517.0, 6.0, 0.0, 0.0, 0.0]
        # Backward through all_reduce sums the G upstream gradients: each sample's gradient is
        # G * (its class's weight), the same in every mode.
        w = torch.arange(1, 51, dtype=torch.float32)
        mine = rank["payload_local"]
        expect = (2 * w[mine["labels"]]).unsqueeze(1).expand_as(mine["acts"][0])
        assert torch.equal(dense["grads"][0], expect)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_sync_free_present_only_and_general_backward_equal_dense(tmp_path_factory):
    """present_only with a static row count (max_rows: no host sync) and the general backward
    (gradients all-reduced instead of multiplied by the world size) give the dense numbers."""
    for rank in _results(tmp_path_factory)["ranks"]:
        dense = rank["payload_dense"]
        for mode in ("present_static", "general"):
            got = rank[f"payload_{mode}"]
            assert torch.equal(got["counts"], dense["counts"]), mode
            for i in range(2):
                assert torch.equal(got["sums"][i], dense["sums"][i]), mode
                assert torch.equal(got["grads"][i], dense["grads"][i]), mode


@pytest.mark.slow
@pytest.mark.deepspeed
def test_trainer_present_only_payload_trains_as_dense(tmp_path_factory):
    """train_epoch with selectivity.sync_present_only ships a static min(K, global batch) rows
    (no host sync) and trains exactly as the dense payload does."""
    for rank in _results(tmp_path_factory)["ranks"]:
        got = rank["present_trainer"]
        assert got[True] == got[False], got
        assert got[False]["train_batch_si"] > 0


@pytest.mark.slow
@pytest.mark.deepspeed
def test_fused_penalty_equals_per_layer_reference_across_ranks(tmp_path_factory):
    """Through the real 2-rank all-reduce, the fused penalty gives the per-layer form's values
    and gradients (float64 to 1e-12, float32 to rounding), the same on both ranks, and the
    value of one process on the concatenated batch."""
    from seltrain.selectivity import selectivity_penalty

    ranks = _results(tmp_path_factory)["ranks"]
    for dtype, tol in (("float64", 1e-12), ("float32", 2e-6)):
        for rank in ranks:
            (mu_f, pl_f, g_f), (mu_r, pl_r, g_r) = (rank[f"fused_{dtype}"][k]
                                                    for k in ("fused", "reference"))
            assert pl_r.abs().min() > 0.01
            torch.testing.assert_close(pl_f, pl_r, rtol=tol, atol=tol)
            torch.testing.assert_close(mu_f, mu_r, rtol=tol, atol=tol)
            for a, b in zip(g_f, g_r):
                assert b.abs().max() > 0
                torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()))
        assert torch.equal(ranks[0][f"fused_{dtype}"]["fused"][0],
                           ranks[1][f"fused_{dtype}"]["fused"][0])
        acts = [torch.cat([r[f"fused_{dtype}"]["acts"][i] for r in ranks]) for i in range(3)]
        labels = torch.cat([r[f"fused_{dtype}"]["labels"] for r in ranks])
        mu_one, _ = selectivity_penalty(acts, labels, 12)
        torch.testing.assert_close(ranks[0][f"fused_{dtype}"]["fused"][0], mu_one, rtol=tol,
                                   atol=tol)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_sharded_evaluation_equals_one_process(tmp_path_factory):
    res = _results(tmp_path_factory)
    single = res["single"]["eval"]
    for split, size in (("val", 127), ("test", 255)):
        ref = single[split]
        shards = [r["eval"][split]["shard"] for r in res["ranks"]]
        assert sorted(shards) == [size // 2, size - size // 2]  # uneven, no padding
        assert ref["n"] == size
        for rank in res["ranks"]:
            got = rank["eval"][split]
            assert got["n"] == size  # every sample counted once across ranks
            assert got["acc"] == ref["acc"]  # integer counts: exact
            # float64 class sums from different partial sums: equal to ~1e-16, not bitwise.
            assert abs(got["si"] - ref["si"]) <= 1e-12
            for layer, units in ref["si_units"].items():
                assert float((got["si_units"][layer] - units).abs().max()) <= 1e-12


@pytest.mark.slow
def test_two_rank_run_reports_what_its_checkpoint_scores(tmp_path):
    """A 2-rank torchrun run (BatchNorm in training mode, augmentation on) reports for its best
    epoch the test accuracy and per-layer SI of its own best.pt evaluated in one process. DDP
    broadcasts rank 0's running statistics only at a training forward, so after the epoch's
    last step each rank's hold its own last batch; evaluation first gives every rank rank 0's
    (engine.sync_buffers). Without that the SI differs by about 1e-4."""
    import json

    env = _env(tmp_path)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "seltrain", "train",
                        "configs/synthetic.yaml", *TINY, "train.epochs=1",
                        "run.tensorboard=false", "run.name=ddp", f"run.out_dir={tmp_path}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with open(tmp_path / "ddp" / "summary.json") as f:
        reported = json.load(f)
    assert reported["world_size"] == 2 and reported["best_epoch"] == 0
    one = evaluate_checkpoint(str(tmp_path / "ddp"))
    assert one["n"] == 256
    assert reported["test_acc"] == one["acc"]  # integer counts: exact
    assert reported["test_si_per_layer"].keys() == one["si_per_layer"].keys()
    for layer, si in one["si_per_layer"].items():
        # float64 class sums added in another order: equal to ~1e-16, not bitwise
        assert abs(reported["test_si_per_layer"][layer] - si) <= 1e-12, layer


def _train_env(tmp_path, **extra):
    env = _env(tmp_path)
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.mark.slow
def test_rank_that_cannot_join_fails_fast(tmp_path):
    """WORLD_SIZE=2 with one process (rank 0 waits), and a rank 1 with nobody to join."""
    for rank, port in ((0, 29741), (1, 29742)):
        env = _train_env(tmp_path, WORLD_SIZE=2, RANK=rank, LOCAL_RANK=rank,
                         MASTER_ADDR="127.0.0.1", MASTER_PORT=port, SELTRAIN_DIST_TIMEOUT=4)
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", "seltrain", "train", "configs/synthetic.yaml",
                            *TINY, f"run.out_dir={tmp_path}"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        took = time.time() - t0
        assert p.returncode == 1, p.stderr[-2000:]
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert lines[-1].startswith(f"seltrain: error: rank {rank} could not join the process "
                                    "group at 127.0.0.1:"), p.stderr[-2000:]
        assert "within 4s" in lines[-1] and "Traceback" not in p.stderr
        # 4 s join bound, plus interpreter/torch start-up on a busy 2-core box.
        assert took < 60, took


_OWN_GROUP_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from seltrain.config import load_config
from seltrain.errors import ConfigError
from seltrain.trainer import Trainer

out, port_b = sys.argv[1], sys.argv[2]
tiny = ["data.synthetic.train_size=64", "data.synthetic.test_size=16", "data.val_size=0",
        "data.synthetic.image_size=8", "train.epochs=1", "train.max_steps_per_epoch=2",
        "run.progress=false", "run.tensorboard=false", f"run.out_dir={out}"]
seen = {}
try:  # 7 is not divisible by the world size: the constructor fails after joining
    Trainer(load_config(None, tiny + ["train.batch_size=7"]))
except ConfigError:
    seen["after_failed_init"] = dist.is_initialized()
os.environ["MASTER_PORT"] = port_b  # a fresh rendezvous for the second group
trainer = Trainer(load_config(None, tiny + ["train.batch_size=8"]))
seen["during"] = [dist.is_initialized(), trainer.ctx.owns_group, trainer.ctx.world_size]
seen["summary_world_size"] = trainer.fit()["world_size"]
seen["after_fit"] = dist.is_initialized()
print(json.dumps(seen))
"""


def test_a_trainer_tears_down_the_group_it_set_up_itself(tmp_path):
    """Trainer(cfg) without a ctx joins the group the environment names, and tears it down
    again: after fit(), and when its constructor fails."""
    import json

    port_a, port_b = free_port(), free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-c", _OWN_GROUP_SCRIPT, str(tmp_path / "runs"), str(port_b)],
        env=_train_env(tmp_path, WORLD_SIZE=2, RANK=r, LOCAL_RANK=r, MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port_a, SELTRAIN_DIST_TIMEOUT=60),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        seen = json.loads(out.strip().splitlines()[-1])
        assert seen == {"after_failed_init": False, "during": [True, True, 2],
                        "summary_world_size": 2, "after_fit": False}


if __name__ == "__main__":
    {"equivalence": _equivalence_worker, "single": _single_worker}[sys.argv[1]](sys.argv[2])
