"""The wall time of an alpha sweep (default tune/alpha.yaml) on one node of G GPUs, from the
GPU check's measured seconds per trial-epoch (its ``trials_per_gpu`` section).

    python benchmarks/estimate_alpha_sweep.py --check OUT/gpu_check.json [--gpus 8]
        [--search alpha] [--json FILE]

The check times one epoch of the sweep's trial (configs/cifar10_resnet20.yaml at its data
sizes, alpha = -1, training plus validation and test) with 1, 2 and 4 trials sharing one GPU;
``epoch_s_slowest`` is the slowest trial's epoch. With n trials per GPU and G GPUs a wave of
min(G * n, max_concurrent_trials) trials runs at once, so

    wall = ceil(trials / slots) * epochs * epoch_s(n)

for the recipe's trials (grid points x seeds) and epochs (its base recipe's train.epochs).
Trial start-up (Ray, the process, the first epoch's warm-up: cuDNN, the allocator) and the
check's own noise are not in it. Every figure comes from the check's JSON: on a check that
did not run that section (no GPU) this script says so and exits 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def estimate(check: dict, trials: int, epochs: int, gpus: int, max_concurrent: int) -> dict:
    section = check.get("sections", {}).get("trials_per_gpu", {})
    if section.get("status") != "ok":
        raise ValueError(f"the check's trials_per_gpu section is {section.get('status', 'missing')}"
                         f" ({section.get('why', 'no figures')}); the estimate needs it from "
                         "a run on a GPU")
    rows = {}
    for n, run in section["runs"].items():
        if "epoch_s_slowest" not in run:
            continue
        n = int(n)
        slots = min(gpus * n, max_concurrent)
        waves = math.ceil(trials / slots)
        hours = waves * epochs * run["epoch_s_slowest"] / 3600
        rows[n] = {"trials_per_gpu": n, "slots": slots, "waves": waves,
                   "epoch_s": run["epoch_s_slowest"], "hours": hours,
                   "peak_memory_mb_per_trial": run.get("peak_memory_mb_per_trial"),
                   # the same, were max_concurrent_trials no bound
                   "hours_if_all_slots_used": math.ceil(trials / (gpus * n)) * epochs
                   * run["epoch_s_slowest"] / 3600}
    if not rows:
        raise ValueError("the check's trials_per_gpu section holds no measured run")
    best = min(rows.values(), key=lambda r: r["hours"])
    return {"device": check.get("device"), "gpus": gpus, "trials": trials, "epochs": epochs,
            "max_concurrent_trials": max_concurrent, "by_trials_per_gpu": rows,
            "best": best}


def main() -> None:
    from seltrain.errors import ConfigError
    from seltrain.tuning.recipe import enumerate_trials, load_search

    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--check", required=True, help="gpu_check.json of a run on a GPU")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--search", default="alpha", help="search recipe name or path")
    ap.add_argument("--json", default=None, help="also write the estimate here")
    ap.add_argument("--allow-smoke", action="store_true",
                    help="accept a --smoke check (toy sizes: the arithmetic only, for tests)")
    a = ap.parse_args()
    try:
        with open(a.check) as f:
            check = json.load(f)
        if check.get("smoke") and not a.allow_smoke:
            raise ValueError(f"{a.check} is a --smoke check (toy sizes on {check.get('device')})"
                             "; the estimate needs the full check's figures from a GPU")
        recipe, base = load_search(a.search)
        r = estimate(check, len(enumerate_trials(recipe)), base.train.epochs, a.gpus,
                     recipe.max_concurrent_trials)
    except (OSError, json.JSONDecodeError, ValueError, ConfigError) as e:
        print(f"estimate_alpha_sweep: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{a.search}: {r['trials']} trials x {r['epochs']} epochs on {a.gpus} GPUs "
          f"({r['device']}), max_concurrent_trials {r['max_concurrent_trials']}")
    for n, row in sorted(r["by_trials_per_gpu"].items()):
        print(f"  {n} trial(s) per GPU: {row['slots']} at once, {row['waves']} wave(s) of "
              f"{row['epoch_s']:.1f} s per epoch: {row['hours']:.2f} h"
              + (f" ({row['hours_if_all_slots_used']:.2f} h with max_concurrent_trials >= "
                 f"{a.gpus * n})" if row["slots"] < a.gpus * n else ""))
    b = r["best"]
    print(f"estimated wall time: {b['hours']:.2f} h with {b['trials_per_gpu']} trial(s) per GPU")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
