r"""``seltrain data write``: one split of a dataset to an FFCV .beton (seltrain/data/writer.py);
``seltrain data check``: list the image files of a recipe's dataset that cannot be decoded.

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


def _recipe(args):
    from seltrain.config import load_config

    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.dataset={args.dataset}")
    if args.root:
        overrides.append(f"data.root={args.root}")
    return load_config(args.config, overrides)


def _write(args) -> int:
    from seltrain.data.writer import WriteOptions, write_beton
    from seltrain.errors import ConfigError, Interrupted

    if args.num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0 (0: one per core), got {args.num_workers}")
    cfg = _recipe(args)
    opts = WriteOptions(write_mode=args.write_mode, max_resolution=args.max_resolution,
                        jpeg_quality=args.jpeg_quality,
                        compress_probability=args.compress_probability,
                        smart_threshold=args.smart_threshold, num_workers=args.num_workers,
                        progress=not args.no_progress)
    existed = os.path.exists(args.out)
    try:
        meta = write_beton(cfg, args.split, args.out, opts, force=args.force)
    except KeyboardInterrupt:
        kept = "the existing file is unchanged" if existed else "nothing was written"
        raise Interrupted(f"stopped writing {os.path.abspath(args.out)}; its temporary file was "
                          f"removed and {kept}; run the command again") from None
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
    w.add_argument("--force", action="store_true",
                   help="replace --out if it exists (only once the new file is complete)")
    w.set_defaults(func=_write, sigterm_as_interrupt=True)

    c = sub.add_parser("check", help="decode every image file of a recipe's dataset and list "
                       "the unreadable ones (not images, truncated)")
    c.add_argument("overrides", nargs="*", help="recipe overrides, key.sub=value")
    c.add_argument("--config", help="a recipe YAML whose data section picks the dataset")
    c.add_argument("--dataset", help="data.dataset (e.g. imagefolder, tinyimagenet)")
    c.add_argument("--root", help="data.root: where the dataset lives")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_check)


def _check(args) -> int:
    """List every image of the train and test splits that cannot be decoded, one per line."""
    from seltrain.data import load_dataset
    from seltrain.data.sources import find_unreadable
    from seltrain.errors import DataError

    cfg = _recipe(args)
    total, bad = 0, []
    for split in ("train", "test"):
        _, source = load_dataset(cfg, split)
        total += len(source)
        if hasattr(source, "paths"):  # arrays (CIFAR, Fashion-MNIST) were decoded to load
            bad += find_unreadable(list(source.paths), progress=not args.no_progress)
    for path, why in bad:
        print(f"{path}: {why}")
    if bad:
        raise DataError(f"{len(bad)} of {total} images of {cfg.data.dataset} cannot be decoded "
                        "(listed on stdout); replace or remove them")
    print(f"all {total} images of {cfg.data.dataset} decode")
    return 0
