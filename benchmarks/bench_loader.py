"""Training-pipeline throughput: seltrain's FFCV loader vs a torchvision ImageFolder DataLoader.

Both decode, random-resized-crop (scale 0.25-1, as seltrain uses below 96 px), flip and batch
the same JPEGs into uint8 [B, 3, S, S] batches, with the same number of workers (FFCV: numba
threads; torchvision: DataLoader processes), batch 256, random order.
- torchvision: ``ImageFolder`` + ``RandomResizedCrop`` + ``RandomHorizontalFlip`` on the PIL
  image, then ``PILToTensor`` (the fastest ordering measured here), persistent workers.
- FFCV: seltrain's ``FFCVLoader`` as the trainer uses it (``borrow=True``: batches are FFCV's
  buffers, consumed before the next is drawn), reading a .beton of the same JPEGs re-encoded at
  quality 90 (jpg mode) and, for the raw rows, of the decoded pixels.
The source JPEGs default to 64 px, Tiny ImageNet's size (the dataset trained at 64 px), cut from
a real photograph (matplotlib's sample image) so they hold natural-image content; ``--source
noise`` uses the test suite's synthetic images instead. The first epoch of each loader is a
warm-up (FFCV JIT-compiles its pipeline; DataLoader workers start) and is not timed; then the
loaders are timed in turn, ``--repeats`` times, and the median is reported. The writes are timed
too (images/s per writer process).

    .venv/bin/python benchmarks/bench_loader.py            # ~2,000 JPEGs, 64 px, 2 workers
    .venv/bin/python benchmarks/bench_loader.py --source-size 96 --out /tmp/b96.json
    .venv/bin/python benchmarks/bench_loader.py --images 500 --epochs 1   # a quick look

Results: printed as a table and saved to benchmarks/results/bench_loader.json, with the
machine's load average while it ran ("machine_load").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from fixtures_data import write_imagefolder  # noqa: E402
from seltrain.config import load_config  # noqa: E402
from seltrain.data.ffcv_pipeline import FFCVLoader, image_pipeline  # noqa: E402
from seltrain.data.loaders import RankSharding  # noqa: E402
from seltrain.data.writer import WriteOptions, write_beton  # noqa: E402


class Timed:
    """A loader warmed up once (JIT, worker start-up), then timed epoch by epoch."""

    def __init__(self, loader, set_epoch):
        self.loader, self.set_epoch, self.epoch = loader, set_epoch, 0
        self.run(1)

    def run(self, epochs: int) -> float:
        n, t0 = 0, time.perf_counter()
        for _ in range(epochs):
            self.set_epoch(self.epoch)
            self.epoch += 1
            for x, _ in self.loader:
                n += x.shape[0]
        return n / (time.perf_counter() - t0)


def torchvision_loader(root: str, size: int, workers: int, batch: int) -> Timed:
    from torchvision import datasets, transforms as T

    # The classic recipe, cropping and flipping the PIL image before the uint8 tensor: the
    # fastest ordering measured here (426 us/image on one core vs 495 for tensor-first v2).
    tf = T.Compose([T.RandomResizedCrop(size, scale=(0.25, 1.0)), T.RandomHorizontalFlip(),
                    T.PILToTensor()])
    ds = datasets.ImageFolder(os.path.join(root, "train"), transform=tf)
    g = torch.Generator()
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                     persistent_workers=workers > 0, generator=g,
                                     drop_last=True)
    return Timed(dl, lambda e: g.manual_seed(e))


def ffcv_loader(beton: str, n: int, size: int, workers: int, batch: int) -> Timed:
    loader = FFCVLoader(beton, np.arange(n), batch, train=True,
                        pipeline=image_pipeline("imagenet", size, True, True),
                        sharding=RankSharding(), seed=0, order="random", os_cache=True,
                        drop_last=True, num_workers=workers, channels=3, borrow=True)
    return Timed(loader, loader.set_epoch)


def photo_jpegs(root: str, classes: int, per_class: int, size: int, seed: int = 0) -> str:
    """root/train/class<k>/img_<j>.jpg: random square crops (every scale, every position) of
    the photograph that matplotlib ships (sample_data/grace_hopper.jpg, 512x600), resized to
    ``size`` and saved at quality 95, so the JPEGs hold natural-image content."""
    import matplotlib
    from PIL import Image

    photo = Image.open(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data",
                                    "sample_data", "grace_hopper.jpg")).convert("RGB")
    rng = np.random.default_rng(seed)
    w, h = photo.size
    for k in range(classes):
        os.makedirs(os.path.join(root, "train", f"class{k:03d}"), exist_ok=True)
        for j in range(per_class):
            s = int(rng.integers(size, min(w, h) + 1))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            crop = photo.crop((x, y, x + s, y + s)).resize((size, size), Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(os.path.join(root, "train", f"class{k:03d}", f"img_{j:04d}.jpg"),
                      quality=95)
    return root


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--source-size", type=int, default=64,
                   help="side of the source JPEGs (64: Tiny ImageNet's)")
    p.add_argument("--source", choices=("photo", "noise"), default="photo",
                   help="photo: crops of a real photograph; noise: the test suite's class "
                        "colour + ramp + uniform noise images")
    p.add_argument("--max-resolution", type=int, default=None,
                   help="FFCV writes: store images at most this many px on a side (as "
                        "`seltrain data write --max-resolution`); the torchvision loader still "
                        "reads the source JPEGs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per measurement")
    p.add_argument("--repeats", type=int, default=5,
                   help="measurements per loader, taken in turn; the median is reported")
    p.add_argument("--sizes", default="32,64")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                 "bench_loader.json"))
    args = p.parse_args()
    torch.set_num_threads(1)  # the DataLoader workers and FFCV threads are the parallelism
    classes = 10
    per_class = args.images // classes
    n = classes * per_class
    tmp = tempfile.mkdtemp(prefix="bench_loader_")
    if args.source == "photo":
        root = photo_jpegs(os.path.join(tmp, "jpegs"), classes, per_class, args.source_size)
    else:
        root = write_imagefolder(os.path.join(tmp, "jpegs"), n_classes=classes,
                                 n_train_per_class=per_class, n_val_per_class=1,
                                 size=args.source_size)
    cfg = load_config(None, ["data.dataset=imagefolder", f"data.root={root}", "data.val_size=0"])
    writes = {}
    betons = {}
    for mode in ("jpg", "raw"):
        betons[mode] = os.path.join(tmp, f"train_{mode}.beton")
        meta = write_beton(cfg, "train", betons[mode],
                           WriteOptions(write_mode=mode, jpeg_quality=90,
                                        max_resolution=args.max_resolution,
                                        num_workers=args.workers, progress=False))
        writes[mode] = {"images_per_s": meta["images_per_s"],
                        "images_per_s_per_core": round(meta["images_per_s"] / args.workers, 1),
                        "mib": round(meta["bytes"] / 2**20, 1)}
        print(f"write {mode}: {n} images in {meta['write_s']:.1f} s = "
              f"{meta['images_per_s']:.0f} images/s with {args.workers} workers "
              f"({meta['images_per_s'] / args.workers:.0f} per core), "
              f"{meta['bytes'] / 2**20:.1f} MiB", flush=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        loaders = {"torchvision": torchvision_loader(root, size, args.workers, args.batch),
                   "ffcv_jpg": ffcv_loader(betons["jpg"], n, size, args.workers, args.batch),
                   "ffcv_raw": ffcv_loader(betons["raw"], n, size, args.workers, args.batch)}
        # Taken in turn, so a burst of load from other jobs hits every loader alike.
        runs = {k: [] for k in loaders}
        for _ in range(args.repeats):
            for k, timed in loaders.items():
                runs[k].append(timed.run(args.epochs))
        med = {k: float(np.median(v)) for k, v in runs.items()}
        tv, fj, fr = med["torchvision"], med["ffcv_jpg"], med["ffcv_raw"]
        rows.append({"size": size, "torchvision": round(tv, 1), "ffcv_jpg": round(fj, 1),
                     "ffcv_raw": round(fr, 1), "speedup_jpg": round(fj / tv, 2),
                     "speedup_raw": round(fr / tv, 2),
                     "runs": {k: [round(v, 1) for v in vs] for k, vs in runs.items()}})
        del loaders
        print(rows[-1], flush=True)
    stored = f", FFCV stores <= {args.max_resolution} px" if args.max_resolution else ""
    print(f"\n{n} JPEGs ({args.source}) of {args.source_size} px{stored}, {args.workers} workers, batch {args.batch}, "
          f"median of {args.repeats} x {args.epochs} timed epochs (images/s)")
    print("| output px | torchvision ImageFolder | FFCV (jpg) | FFCV (raw) | jpg speedup | "
          "raw speedup |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['torchvision']:.0f} | {r['ffcv_jpg']:.0f} | "
              f"{r['ffcv_raw']:.0f} | {r['speedup_jpg']:.1f}x | {r['speedup_raw']:.1f}x |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    result = {"images": n, "source": args.source, "source_size": args.source_size,
              "ffcv_max_resolution": args.max_resolution, "workers": args.workers,
              "batch": args.batch, "timed_epochs": args.epochs, "repeats": args.repeats, "rows": rows, "writes": writes,
              "cpu_count": os.cpu_count(), "machine_load": os.getloadavg(),
              "platform": platform.platform(), "torch": torch.__version__}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"saved {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
