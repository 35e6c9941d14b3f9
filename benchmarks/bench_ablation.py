"""Single-unit ablation sweep of resnet20's last stage: the fast method against the naive one.

The sweep zeroes each of the 64 units of layer3.0, layer3.1 and layer3.2 in turn (192
ablations) and measures overall and per-class accuracy on 2,000 synthetic 32 px test images.
Naive: a whole forward pass per ablated unit. Fast (seltrain.analysis.ablation): the network is
split at the layer with torch.fx, the part below runs once per batch and only the part above
runs per ablation. Both run in this one process, one after the other, on the same model and
data; the script asserts the accuracies are identical and writes
benchmarks/results/bench_ablation.json. Target: at least 5x, identical numbers.

    python benchmarks/bench_ablation.py                  # 2,000 images, CPU (minutes: naive)
    python benchmarks/bench_ablation.py --images 500     # a quick look
    python benchmarks/bench_ablation.py --device cuda

The model is resnet20 briefly trained (``--train-steps`` SGD steps on the synthetic train
split) so accuracies and drops are not those of chance.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seltrain.analysis.ablation import single_unit_ablation  # noqa: E402
from seltrain.config import SyntheticConfig  # noqa: E402
from seltrain.data.sources import load_split  # noqa: E402
from seltrain.models import build_model  # noqa: E402

LAYERS = ("layer3.0", "layer3.1", "layer3.2")


def data(n_test: int, n_train: int, size: int):
    info, train = load_split("synthetic", None, "train", synthetic=SyntheticConfig(
        image_size=size, train_size=n_train, test_size=n_test))
    _, test = load_split("synthetic", None, "test", synthetic=SyntheticConfig(
        image_size=size, train_size=n_train, test_size=n_test))
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)

    def norm(split):
        x = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2).float() / 255
        return (x - mean) / std, torch.as_tensor(np.asarray(split.labels), dtype=torch.long)

    return info, norm(train), norm(test)


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results", "bench_ablation.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    info, (xtr, ytr), (x, y) = data(args.images, 2048, args.image_size)
    model = build_model("resnet20", info.num_classes, info.channels, args.image_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(args.train_steps):
        idx = torch.randint(0, len(xtr), (64,))
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = model.to(args.device).eval()
    x = x.to(args.device)

    results, seconds = {}, {}
    for method in ("fast", "naive"):
        t0 = time.perf_counter()
        results[method] = {name: single_unit_ablation(model, name, x, y, fast=method == "fast",
                                                      batch_size=args.batch_size,
                                                      device=args.device)
                           for name in LAYERS}
        seconds[method] = time.perf_counter() - t0
        print(f"{method}: {seconds[method]:.1f} s", flush=True)
    for name in LAYERS:
        f, n = results["fast"][name], results["naive"][name]
        assert f["method"] == "fast" and n["method"] == "naive"
        assert f["baseline_acc"] == n["baseline_acc"], name
        np.testing.assert_array_equal(f["ablated_class_acc"], n["ablated_class_acc"])
        np.testing.assert_array_equal(f["ablated_acc"], n["ablated_acc"])
    speedup = seconds["naive"] / seconds["fast"]
    base = results["fast"][LAYERS[0]]["baseline_acc"]
    print(f"resnet20 last stage ({3 * 64} single-unit ablations), {args.images} images, "
          f"{args.device}: fast {seconds['fast']:.1f} s, naive {seconds['naive']:.1f} s, "
          f"{speedup:.1f}x, identical accuracies (baseline {base:.4f})")
    record = {"benchmark": "single-unit ablation sweep, resnet20 layer3.0-3.2",
              "images": args.images, "image_size": args.image_size,
              "batch_size": args.batch_size, "device": args.device, "units": 3 * 64,
              "fast_s": seconds["fast"], "naive_s": seconds["naive"], "speedup": speedup,
              "identical": True, "baseline_acc": base,
              "mean_overall_drop": {n: float(np.mean(results["fast"][n]["overall_drop"]))
                                    for n in LAYERS},
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.platform(), "cpus": os.cpu_count(),
              "command": "python benchmarks/bench_ablation.py " + " ".join(sys.argv[1:])}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(record, fh, indent=1)
    print(f"wrote {args.out}")
    return 0 if speedup >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
