"""What an analysis runs on: a network with its data split, layers and device (``Target``).

Two kinds, one ``Target``, found by ``find_targets`` and opened by ``TargetRef.load``:

* a checkpoint seltrain trained (``load_target``): the split is rebuilt from the
  checkpoint's saved recipe (``--data-root`` points it elsewhere) by the data layer's
  ``build_eval_loader``, carved exactly as training carved it;
* a network seltrain did not train (``--model``, or a target folder holding target.json;
  seltrain/analysis/target_spec.py): the data its spec names, through the same loaders.

Either way the split is normalised by the trainer's ``DevicePreprocess`` and streamed: no
split is held in memory whole.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any, Callable

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

    def __init__(self, loader, preprocess, max_images: int | None, size: int | None = None):
        self.loader, self.preprocess, self.max_images = loader, preprocess, max_images
        # Images held in memory at their own size (CIFAR's 32 px) for a network that wants
        # another: resized on the device (bilinear, antialiased), after normalisation, which
        # commutes with it (a per-channel affine map; the weights sum to 1).
        self.size = size
        self.num_images = loader.num_samples if max_images is None \
            else min(max_images, loader.num_samples)

    def __len__(self) -> int:
        return -(-self.num_images // self.loader.batch_size)

    def __iter__(self):
        for x, y in self.preprocess.batches(self.loader, max_images=self.num_images):
            if self.size and tuple(x.shape[-2:]) != (self.size, self.size):
                x = torch.nn.functional.interpolate(x, size=(self.size, self.size),
                                                    mode="bilinear", antialias=True,
                                                    align_corners=False)
            yield x, y.cpu()


@dataclass
class Target:
    """One network with its data, layers and device, ready to analyse: a trained checkpoint
    (``ckpt``, ``cfg`` its recipe) or a network seltrain did not train (``spec``; ``cfg`` then
    describes its data only, ``ckpt_path`` is its weights file or target.json)."""
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
    spec: Any = None            # the TargetSpec of a network seltrain did not train
    # split -> the same target opened on that split (set by TargetRef.load)
    reopen: Callable[[str], "Target"] | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.run_dir)


def on_split(target: Target, split: str, option: str) -> Target:
    """``target`` (the same network) reading the images of ``split``: for an analysis that
    chooses units on one split and scores them on another. A target without that split is
    one line that names ``option``. ``split`` "same": ``target`` itself."""
    if split in ("same", target.split):
        return target
    if target.reopen is None:
        raise ConfigError(f"{option} {split}: this target was not opened from a run or a "
                          f"target folder; leave {option} out")
    try:
        other = target.reopen(split)
    except ConfigError as e:
        why = re.sub(r"^--split \w+: ", "", str(e).split("; ")[0])
        raise ConfigError(f"{option} {split}: {why}; leave {option} out to use the "
                          f"{target.split} split for both") from None
    return replace(target, data=other.data, split=split)


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


@dataclass
class TargetRef:
    """A target found but not opened: a trained run folder and its checkpoint, or a target
    folder and its spec (target.json), or a spec to open into ``run_dir`` (``--model``)."""
    run_dir: str | None
    ckpt_path: str | None = None
    spec: Any = None

    def load(self, opts: AnalysisOptions) -> Target:
        if self.spec is None:
            target = load_target(self.run_dir, self.ckpt_path, opts)
        else:
            from seltrain.analysis.target_spec import open_target

            target = open_target(self.spec, self.run_dir, opts)
        target.reopen = lambda split: self.load(replace(opts, split=split))
        return target


def find_targets(path: str, skipped: list | None = None,
                 checkpoint: str = "best") -> list[TargetRef]:
    """The targets under ``path``: a target folder (target.json), a folder of target folders,
    or what ``checkpoint.find_checkpoints`` finds (a checkpoint, a run folder, an
    experiment's trials); ``checkpoint`` (``--checkpoint``) picks which of a run folder's."""
    from seltrain.analysis.target_spec import read_spec, target_folders
    from seltrain.checkpoint import find_checkpoints

    folders = target_folders(path)
    if folders:
        if checkpoint != "best":
            raise ConfigError(f"--checkpoint {checkpoint} picks among a trained run's "
                              f"checkpoints; {path} is a target folder (one network's "
                              "weights): leave --checkpoint out")
        return [TargetRef(f, spec=read_spec(f)) for f in folders]
    return [TargetRef(run, ckpt) for run, ckpt in find_checkpoints(path, skipped, checkpoint)]
