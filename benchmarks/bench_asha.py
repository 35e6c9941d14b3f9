"""Full grid against ASHA on the quickstart alpha space (tune/quickstart.yaml), side by side.

Target: ASHA's best alpha scores within one seed-standard-deviation of the grid's
best, using at most 40% of the grid's trial-epochs. Both searches run the same trials (the
quickstart alphas x seeds, same base recipe, test split evaluated only at new-best-val epochs)
through `seltrain.tuning.run_search` (what `seltrain tune` runs), one after the other in this
process; ASHA ranks trials at 1, 3 and 9 epochs (grace period 1, reduction
factor 3) of 12. Reported per search: trial-epochs actually
trained (stopped trials count the epochs they logged), wall time, best alpha (by mean best
val accuracy over completed trials) and its test accuracy.

    .venv/bin/python benchmarks/bench_asha.py            # ~32 min; benchmarks/results/bench_asha.json
    .venv/bin/python benchmarks/bench_asha.py --quick    # synthetic data, minutes: a smoke run

Measured (2 CPU cores, `python benchmarks/bench_asha.py --seeds 3`: 4 alphas x 3 seeds, 12
epochs, 1k train / 2k val images, 32 min in all): grid 144 trial-epochs in 1372 s, best alpha -1
(val 0.734 +- 0.013 over seeds); ASHA 43 trial-epochs (30%) in 555 s, and it picks alpha -1, the
grid's best. With 2 seeds (8 trials) ASHA used 41% (39 of 96) and also picked -1: the first trial
to reach a rung always continues, so a small search pays for a few full trials before the rungs
fill, and the saving grows with the number of trials.
Full records: benchmarks/results/bench_asha.json (3 seeds), bench_asha_2seeds.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# Ray's workers (started by the local Ray that each search brings up) import seltrain from here.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def run_search(recipe: dict, name: str, storage: str, sets: list[str]) -> dict:
    from seltrain import tuning
    from seltrain.errors import SeltrainError
    from seltrain.report import collect_trials

    path = os.path.join(storage, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f)
    t0 = time.perf_counter()
    try:
        code = tuning.run_search(path, overrides=sets, storage=storage)
    except SeltrainError as e:
        sys.exit(f"{name} failed: {e}")
    wall = time.perf_counter() - t0
    if code != 0:
        sys.exit(f"{name} failed: exit status {code} (a trial failed or was left unfinished)")
    rows = collect_trials(os.path.join(storage, recipe["name"]))
    done = [x for x in rows if x["complete"]]
    by_alpha: dict[float, list] = {}
    for x in done:
        by_alpha.setdefault(x["alpha"], []).append(x)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    std = lambda v: (sum((a - mean(v)) ** 2 for a in v) / max(1, len(v) - 1)) ** 0.5  # noqa
    agg = {a: {"val_acc_mean": mean([x["best_val_acc"] for x in xs]),
               "val_acc_std": std([x["best_val_acc"] for x in xs]),
               "test_acc_mean": mean([x["test_acc"] for x in xs]), "n": len(xs)}
           for a, xs in by_alpha.items()}
    best = max(agg, key=lambda a: agg[a]["val_acc_mean"])
    return {"trials": len(rows), "completed": len(done),
            "trial_epochs": sum(x["epochs_run"] for x in rows), "wall_s": round(wall, 1),
            "best_alpha": best, "best": agg[best], "per_alpha": agg}


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="synthetic base recipe (smoke run)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--limit-train", type=int, default=1000)
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "bench_asha.json"))
    args = p.parse_args()
    with open(os.path.join(REPO, "tune", "quickstart.yaml")) as f:
        base = yaml.safe_load(f)
    base["base"] = os.path.join(REPO, "configs", "synthetic.yaml" if args.quick
                                else "quickstart.yaml")
    base["seeds"] = list(range(args.seeds))
    # Test accuracy only where val accuracy reaches a new best (the only epochs a trial's
    # reported test number can come from): the 10k-image test split would otherwise cost more
    # than the training itself at this size.
    sets = [f"train.epochs={args.epochs}", "run.progress=false", "train.eval_test=at_best"]
    if args.quick:
        sets += ["data.val_size=128", "data.synthetic.train_size=512",
                 "data.synthetic.test_size=256", "data.synthetic.image_size=16"]
    else:
        # Smaller than the demo's 12k train images so that grid + ASHA fit in ~15 minutes.
        sets += [f"data.limit_train={args.limit_train}", f"data.val_size={args.val_size}"]
    storage = tempfile.mkdtemp(prefix="bench_asha_")
    grid = run_search({**base, "name": "grid", "scheduler": {"type": "none"}}, "grid",
                      storage, sets)
    asha = run_search({**base, "name": "asha", "scheduler": {
        "type": "asha", "grace_period": 1, "reduction_factor": 3}}, "asha", storage, sets)
    gap = grid["best"]["val_acc_mean"] - asha["per_alpha"].get(
        asha["best_alpha"], {"val_acc_mean": 0})["val_acc_mean"]
    # ASHA's pick judged on the grid's (complete, all-seed) numbers, against the grid's best.
    asha_pick_on_grid = grid["per_alpha"][asha["best_alpha"]]["val_acc_mean"]
    seed_std = grid["best"]["val_acc_std"]
    ratio = asha["trial_epochs"] / grid["trial_epochs"]
    out = {"space": base["space"], "seeds": base["seeds"], "epochs": args.epochs,
           "base": base["base"], "sets": sets, "grid": grid, "asha": asha,
           "asha_trial_epoch_ratio": round(ratio, 3),
           "asha_pick_val_acc_on_grid": asha_pick_on_grid,
           "grid_best_minus_asha_pick": grid["best"]["val_acc_mean"] - asha_pick_on_grid,
           "grid_best_seed_std": seed_std, "asha_reported_gap": gap,
           "target_met": bool(ratio <= 0.40 and
                              grid["best"]["val_acc_mean"] - asha_pick_on_grid <= seed_std),
           "machine": f"{platform.node()} {os.cpu_count()} CPUs, {platform.platform()}",
           "command": " ".join([os.path.relpath(sys.executable, REPO)] + sys.argv)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2, default=str)
    for k in ("grid", "asha"):
        s = out[k]
        print(f"{k:5s} trial-epochs {s['trial_epochs']:4d}  wall {s['wall_s']:7.1f} s  best alpha "
              f"{s['best_alpha']:g}  val {s['best']['val_acc_mean']:.4f}  test "
              f"{s['best']['test_acc_mean']:.4f}")
    print(f"ASHA used {ratio:.0%} of the grid's trial-epochs; its pick is "
          f"{out['grid_best_minus_asha_pick']:.4f} below the grid's best (seed std "
          f"{seed_std:.4f}); target met: {out['target_met']}  -> {args.out}")


if __name__ == "__main__":
    main()
