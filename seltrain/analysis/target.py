"""What an analysis runs on: one trained checkpoint with its model, recipe and data split.

The split is rebuilt from the checkpoint's saved recipe (``--data-root`` points it
elsewhere) by the data layer's ``build_eval_loader``, carved exactly as training carved it,
and normalised by the trainer's ``DevicePreprocess``, then streamed: no split is held in
memory whole.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from seltrain.analysis.options import AnalysisOptions
from seltrain.checkpoint import load_trained_model
from seltrain.errors import ConfigError, DataError
from seltrain.probes import resolve_layers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available; use cpu or auto")
    return torch.device(name)


class NormalisedBatches:
    """Re-iterable (x, y) batches of one split, as ``DevicePreprocess.batches`` draws them for
    the trainer (normalised float images on the device), cut after ``max_images``, with the
    labels on the host, where the analyses count hits and save labels. Streams from the
    loader, so no split is held in memory whole."""

    def __init__(self, loader, preprocess, max_images: int | None):
        self.loader, self.preprocess, self.max_images = loader, preprocess, max_images
        self.num_images = loader.num_samples if max_images is None \
            else min(max_images, loader.num_samples)

    def __len__(self) -> int:
        return -(-self.num_images // self.loader.batch_size)

    def __iter__(self):
        for x, y in self.preprocess.batches(self.loader, max_images=self.num_images):
            yield x, y.cpu()


@dataclass
class Target:
    """One checkpoint with its model, recipe and data, ready to analyse."""
    run_dir: str
    ckpt_path: str
    model: Any
    ckpt: dict
    cfg: Any
    info: Any
    data: NormalisedBatches
    device: torch.device
    image_size: int
    layers: list[str]
    split: str

    @property
    def name(self) -> str:
        return os.path.basename(self.run_dir)


def load_target(run_dir: str, ckpt_path: str, opts: AnalysisOptions) -> Target:
    """The checkpoint ``ckpt_path`` of ``run_dir`` on ``opts.device``, with the split and the
    layers (``opts.layers``, by default those probed in training) that ``opts`` asks for."""
    from seltrain.data import DevicePreprocess, build_eval_loader, open_source

    device = pick_device(opts.device)
    model, ckpt, cfg = load_trained_model(ckpt_path, device=device)
    # The analyses stream the split from its source files, through host memory.
    cfg.data.loader, cfg.data.on_device = "torch", False
    if opts.data_root:
        cfg.data.root = opts.data_root
    try:
        source = open_source(cfg, (opts.split,))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"cannot read the {cfg.data.dataset} {opts.split} split ({e}); pass "
                        "--data-root") from None
    loader = build_eval_loader(cfg, opts.split, source=source)
    if loader is None:
        raise ConfigError("this run has no validation split (data.val_size=0); use --split "
                          "test")
    info, size = source.info, source.image_size
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pre = DevicePreprocess(info, device, cfg.train.channels_last)
    spec = opts.layers or ckpt.get("layer_names") or []
    if not spec:
        raise ConfigError(f"{ckpt_path} names no probed layers; pass --layers")
    layers = resolve_layers(model, spec, option="--layers", any_module=True)
    return Target(run_dir=run_dir, ckpt_path=ckpt_path, model=model, ckpt=ckpt, cfg=cfg,
                  info=info, data=NormalisedBatches(loader, pre, opts.max_images or None),
                  device=device, image_size=size, layers=layers, split=opts.split)
