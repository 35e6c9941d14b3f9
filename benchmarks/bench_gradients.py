"""Input gradients of every unit of a layer for a batch of images: batched against naive.

For resnet20 at 32 px and each of ``--layers`` (default layer1.0, 16 units, and layer3.2, 64
units), d a_u(x_n) / d x_n for every unit u and each of ``--images`` images. Batched
(seltrain.analysis.gradients.unit_input_gradients): one forward pass per batch, stopped at the
layer, and one backward per block of ``--unit-block`` units, vmapped over one-hot
grad_outputs. Naive (``unit_input_gradients_naive``): one forward per image and one backward
per (image, unit). Both run in this one process, one after the other, on the same model and
images, ``--rounds`` times in turn (medians compared); the script checks that the gradients agree and writes
benchmarks/results/bench_gradients.json. Agreement, in float32: each (unit, image) gradient
to 1e-6 of the largest entry, except where a pre-activation within rounding of 0 flips a ReLU
between the batched and the single-image convolution (that image's gradients then differ over
a receptive field, for every unit above the flipped ReLU; at most 2% of the images may be
affected, and the counts are recorded). In float64 the two agree to 1e-12
(tests/unit_tests/test_analysis_gradients.py).

    python benchmarks/bench_gradients.py                  # 32 images, CPU
    python benchmarks/bench_gradients.py --device cuda --images 256

The model is resnet20 with random weights and random BatchNorm running statistics: the cost
of a gradient does not depend on what the network learned.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seltrain.analysis.gradients import (unit_input_gradients,  # noqa: E402
                                         unit_input_gradients_naive)
from seltrain.models import build_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--layers", default="layer1.0,layer3.2")
    p.add_argument("--unit-block", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3,
                   help="timings per method, taken in turn; the medians are compared")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results", "bench_gradients.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3, args.image_size)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    model = model.to(args.device).eval()
    x = torch.randn(args.images, 3, args.image_size, args.image_size, device=args.device)

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    rows = []
    for layer in args.layers.split(","):
        # warm-up on 2 images, so neither method pays for first-call set-up
        unit_input_gradients(model, layer, x[:2], unit_block=args.unit_block)
        unit_input_gradients_naive(model, layer, x[:2], [0])
        times: dict[str, list[float]] = {"batched": [], "naive": []}
        for _ in range(args.rounds):  # in turn, so load changes hit both methods alike
            fast, t = timed(lambda: unit_input_gradients(model, layer, x,
                                                         unit_block=args.unit_block))
            times["batched"].append(t)
            slow, t = timed(lambda: unit_input_gradients_naive(model, layer, x))
            times["naive"].append(t)
        t_fast, t_slow = (float(np.median(times[k])) for k in ("batched", "naive"))
        diff = (fast - slow).abs() / slow.abs().max()
        pairs = diff.flatten(2).amax(2) > 1e-6  # [U, N]: (unit, image) gradients that differ
        images = int(pairs.any(0).sum())
        assert images <= 0.02 * args.images, (layer, images)
        rows.append({"layer": layer, "units": fast.shape[0], "batched_s": t_fast,
                     "naive_s": t_slow, "speedup": t_slow / t_fast, "times_s": times,
                     "max_rel_diff": float(diff.max()), "pairs": pairs.numel(),
                     "pairs_differing": int(pairs.sum()), "images_affected": images,
                     "max_rel_diff_elsewhere": float(diff[~pairs].max())})
        print(f"{layer}: {fast.shape[0]} units x {args.images} images, batched {t_fast:.2f} s, "
              f"naive {t_slow:.2f} s: {t_slow / t_fast:.1f}x; {int(pairs.sum())} of "
              f"{pairs.numel()} (unit, image) gradients, of {images} image(s), differ by "
              "> 1e-6 of the largest entry (a ReLU kink), the rest by <= "
              f"{float(diff[~pairs].max()):.1e}", flush=True)
    record = {"benchmark": "unit input gradients, resnet20: batched (vmapped unit blocks) vs "
                           "per-image per-unit loop",
              "images": args.images, "image_size": args.image_size,
              "unit_block": args.unit_block, "device": args.device, "layers": rows,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "load_average_1min_after": os.getloadavg()[0],
              "machine": platform.platform(), "cpus": os.cpu_count(),
              "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda")
              else None,
              "command": (f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} "
                          if "OMP_NUM_THREADS" in os.environ else "")
              + "python benchmarks/bench_gradients.py " + " ".join(sys.argv[1:])}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(record, fh, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
