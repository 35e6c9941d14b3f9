r"""``seltrain data write``: one split of a dataset to an FFCV .beton (seltrain/data/writer.py).

    seltrain data write --dataset cifar10 --root ~/data --split train --out cifar10_train.beton
    seltrain data write --config configs/synthetic.yaml --split val --out syn_val.beton \
        data.synthetic.num_classes=20

The recipe (``--config``, defaults without one) and its ``key.sub=value`` overrides fix what the
torch path would read: dataset, root, the val carve (data.val_size, data.split_seed) and the
synthetic spec. ``--dataset`` and ``--root`` override the recipe's data.dataset / data.root.
"""
from __future__ import annotations

import argparse
import os


def _write(args) -> int:
    from seltrain.config import load_config
    from seltrain.data.writer import WriteOptions, write_beton

    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.dataset={args.dataset}")
    if args.root:
        overrides.append(f"data.root={args.root}")
    cfg = load_config(args.config, overrides)
    opts = WriteOptions(write_mode=args.write_mode, max_resolution=args.max_resolution,
                        jpeg_quality=args.jpeg_quality,
                        compress_probability=args.compress_probability,
                        smart_threshold=args.smart_threshold, num_workers=args.num_workers,
                        progress=not args.no_progress)
    meta = write_beton(cfg, args.split, args.out, opts)
    rate = meta["images_per_s"]
    print(f"wrote {meta['n']} {meta['dataset']} {meta['split']} images ({meta['num_classes']} "
          f"classes, {meta['write_mode']}) to {os.path.abspath(args.out)}: "
          f"{meta['bytes'] / 2**20:.1f} MiB in {meta['write_s']:.1f} s, {rate:.0f} images/s with "
          f"{meta['num_workers']} workers ({rate / meta['num_workers']:.0f} images/s per core); "
          f"sidecar {os.path.basename(args.out)}.json", flush=True)
    return 0


def register(subparsers) -> None:
    from seltrain.data.writer import DEFAULT_SMART_THRESHOLD, WRITE_MODES, WRITE_SPLITS

    data = subparsers.add_parser("data", help="prepare datasets (FFCV .beton files)")
    sub = data.add_subparsers(dest="data_command", required=True)
    w = sub.add_parser("write", help="write one split of a dataset to an FFCV .beton file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("overrides", nargs="*", help="recipe overrides, key.sub=value")
    w.add_argument("--config", help="a recipe YAML whose data section picks the dataset, root, "
                   "val carve and synthetic spec (default: built-in defaults)")
    w.add_argument("--dataset", help="data.dataset: fashion_mnist, cifar10, cifar100, "
                   "tinyimagenet, imagefolder or synthetic")
    w.add_argument("--root", help="data.root: where the dataset lives")
    w.add_argument("--split", required=True, choices=WRITE_SPLITS,
                   help="train and val are the torch path's carve of the train split")
    w.add_argument("--out", required=True, help="the .beton to write (FILE.json goes beside it)")
    w.add_argument("--write-mode", default="raw", choices=WRITE_MODES,
                   help="raw pixels, all JPEG, smart (JPEG above --smart-threshold bytes) or "
                   "proportion (JPEG with --compress-probability); default raw")
    w.add_argument("--max-resolution", type=int, default=None,
                   help="shrink images whose longer side exceeds this (default: keep size)")
    w.add_argument("--jpeg-quality", type=int, default=90)
    w.add_argument("--compress-probability", type=float, default=0.5,
                   help="share of images JPEG-compressed in proportion mode (default 0.5)")
    w.add_argument("--smart-threshold", type=int, default=DEFAULT_SMART_THRESHOLD,
                   help=f"smart mode: JPEG images above this many raw bytes (default "
                   f"{DEFAULT_SMART_THRESHOLD} = 96x96x3)")
    w.add_argument("--num-workers", type=int, default=0,
                   help="writer processes (default 0: one per core)")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    w.set_defaults(func=_write)
