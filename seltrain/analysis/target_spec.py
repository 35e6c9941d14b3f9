"""A network seltrain did not train, as an analysis target: its spec and its folder.

``TargetSpec`` says what to analyse: the network (``torchvision:resnet18`` or
``package.module:factory``, seltrain/models/zoo.py), its weights, the data (``imagefolder:DIR``
or any dataset seltrain reads: ``cifar10:DIR``, ``fashion_mnist``, ``synthetic``, ...), the
image size, the normalisation and a class map. It is plain data (``to_dict``/``from_dict``),
so it can be written down and shipped to another process.

``open_target`` resolves a spec (defaults filled in: the size and normalisation that
torchvision weights were trained with, ImageNet's mean and std for any torchvision network,
else the dataset's own) and returns the ``Target`` every analysis runs on, exactly as for a
trained checkpoint: the split streamed through the data layer's loaders and normalised on the
device, and the network made ``Probed`` from its graph (seltrain/models/graph_points.py), so
layers are named as in the network (``layer4.1``, ``features.28``) and read and zeroed where
its graph says.

A target has a folder, as a trained run has its run folder: ``runs/targets/<model>-<weights
stem>/`` by default (``--target-dir``), holding ``target.json`` (the resolved spec, the
weights' sha256 and the class map) and the analyses' results under ``analysis/<name>/``.
``seltrain analyze NAME FOLDER`` and ``seltrain report`` open it again; a folder that holds
another target (other weights, data or preprocessing) is refused rather than mixed.

Data layout for ``imagefolder:DIR``: DIR/train and DIR/val as seltrain trains from (test
reads val/, val is carved from train); else DIR/val alone, or DIR itself, holds the class
folders of one evaluation split (``--split test``).

Class map (``--class-map FILE``, JSON): ``{"<data class>": <output index>, ...}`` (classes
not in the data may be listed too: one map of ImageNet's 1000 folder names serves every
subset of them), or a list of output indices, one per data class in the data's order. With
it the network may have more outputs than the data has classes; without it the counts must
agree. The data's class k is then scored by output ``map[k]``, argmax still over every output.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from seltrain.errors import CheckpointError, ConfigError, DataError, did_you_mean, excerpt

TARGET_FILE = "target.json"
DEFAULT_ROOT = os.path.join("runs", "targets")
DATASETS = ("imagefolder", "cifar10", "cifar100", "tinyimagenet", "fashion_mnist", "synthetic")
NEEDS_ROOT = ("imagefolder", "cifar10", "cifar100", "tinyimagenet")
# What makes a target: two specs that differ here analyse different things.
IDENTITY = ("model", "weights_sha256", "init_seed", "data", "image_size", "resize_size",
            "mean", "std", "classes")


@dataclass
class TargetSpec:
    """What to analyse (module docstring). ``None`` means "the default" until
    ``resolve_spec`` fills it in; ``target.json`` holds the resolved spec."""
    model: str
    weights: str | None = None                # a file, or a torchvision weights name
    data: str | None = None                   # DATASET[:ROOT]
    image_size: int | None = None
    resize_size: int | None = None            # shorter side before the centre crop
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_map: str | None = None              # the file the class map came from
    # Filled in when resolved:
    weights_sha256: str | None = None
    init_seed: int | None = None              # the seed of a network without weights
    classes: dict[str, int] | None = None     # data class -> output index (the class map)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("mean", "std"):
            d[k] = None if d[k] is None else list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "target spec") -> "TargetSpec":
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: not a JSON object; write it again")
        names = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in names:
                raise ConfigError(f"{where}: unknown key '{k}'{did_you_mean(k, names)}")
        if not isinstance(d.get("model"), str):
            raise ConfigError(f"{where}: 'model' must be a name such as torchvision:resnet18")
        d = dict(d)
        for k in ("mean", "std"):
            if d.get(k) is not None:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**d)

    def identity(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k in IDENTITY}

    def folder_name(self) -> str:
        """``<model>-<weights stem>``: ``resnet18-r18``, ``resnet18-IMAGENET1K_V1``,
        ``mynets.build-init`` (no weights)."""
        source, _, attr = self.model.partition(":")
        if source.endswith(".py"):  # a source file: its name
            source = os.path.splitext(os.path.basename(source))[0]
        model = attr if source == "torchvision" else f"{source}.{attr}"
        w = self.weights
        stem = "init" if not w else os.path.splitext(os.path.basename(w))[0] \
            if (os.sep in w or os.path.exists(w)) else w.rsplit(".", 1)[-1]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model}-{stem}")


def parse_data(text: str) -> tuple[str, str | None]:
    """``imagefolder:DIR`` -> ("imagefolder", DIR); ``fashion_mnist`` -> ("fashion_mnist",
    None). An unknown dataset or a missing folder is one line."""
    name, sep, root = text.partition(":")
    if name not in DATASETS:
        raise ConfigError(f"--data {excerpt(text)}: unknown dataset '{name}'"
                          f"{did_you_mean(name, DATASETS)}; give imagefolder:DIR or one of "
                          f"{', '.join(DATASETS[1:])} (DATASET:DIR where it needs a folder)")
    if name in NEEDS_ROOT and not root:
        raise ConfigError(f"--data {text}: {name} needs its folder: --data {name}:DIR")
    if name == "synthetic" and root:
        raise ConfigError(f"--data {text}: synthetic data has no folder; give --data synthetic")
    return name, (os.path.abspath(os.path.expanduser(root)) if root else None)


def read_class_map(path: str, class_names: tuple[str, ...], outputs: int) -> dict[str, int]:
    """{data class: output index} from a class-map file (module docstring), every data class
    mapped to a distinct output below ``outputs``."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--class-map {path}: cannot read it as JSON ({e}); give "
                          '{"<class>": <output index>, ...} or a list of indices') from None
    if isinstance(raw, list):
        if len(raw) != len(class_names):
            raise ConfigError(f"--class-map {path} lists {len(raw)} indices for "
                              f"{len(class_names)} data classes; give one per class, in the "
                              "data's class order")
        raw = dict(zip(class_names, raw))
    if not isinstance(raw, dict):
        raise ConfigError(f"--class-map {path}: holds a {type(raw).__name__}; give "
                          '{"<class>": <output index>, ...} or a list of indices')
    missing = [c for c in class_names if c not in raw]
    if missing:
        raise ConfigError(f"--class-map {path} does not map the data class '{missing[0]}'"
                          f"{did_you_mean(missing[0], raw)} ({len(missing)} of "
                          f"{len(class_names)} unmapped); map every class folder")
    table = {}
    for c in class_names:
        v = raw[c]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < outputs:
            raise ConfigError(f"--class-map {path}: '{c}' maps to {excerpt(v)}, not an output "
                              f"index in [0, {outputs}) (the network has {outputs} outputs)")
        table[c] = v
    dup = [c for c in class_names if list(table.values()).count(table[c]) > 1]
    if dup:
        raise ConfigError(f"--class-map {path}: classes {', '.join(dup[:3])} map to the same "
                          f"output {table[dup[0]]}; each data class needs its own output")
    return table


def output_order(classes: dict[str, int], class_names: tuple[str, ...],
                 outputs: int) -> torch.Tensor:
    """The outputs of the data's classes first, in the data's order, then the rest."""
    first = [classes[c] for c in class_names]
    used = set(first)
    return torch.tensor(first + [i for i in range(outputs) if i not in used])


# --------------------------------------------------------------------------- the folder

def read_spec(folder: str) -> TargetSpec:
    path = os.path.join(folder, TARGET_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} ({e}); open the network again with "
                              "--model ... --target-dir, which writes it anew") from None
    return TargetSpec.from_dict(data, where=path)


def is_target_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, TARGET_FILE))


def target_folders(path: str) -> list[str]:
    """``path`` itself if it is a target folder, else the target folders in it (sorted)."""
    if is_target_folder(path):
        return [os.path.abspath(path)]
    if not os.path.isdir(path):
        return []
    return [os.path.abspath(os.path.join(path, e)) for e in sorted(os.listdir(path))
            if not e.startswith(".") and is_target_folder(os.path.join(path, e))]


def claim_folder(folder: str, spec: TargetSpec) -> None:
    """Write ``spec`` to ``folder``/target.json, or check that the one there is the same
    target; a folder of another target is refused (its results stay its own)."""
    from seltrain.atomic import atomic_write

    path = os.path.join(folder, TARGET_FILE)
    if os.path.isfile(path):
        held = read_spec(folder)
        if held.identity() != spec.identity():
            key = next(k for k in IDENTITY if held.identity().get(k) != spec.identity().get(k))
            raise ConfigError(f"{folder} holds the results of another target ({key} "
                              f"{excerpt(held.identity().get(key), 60)}, here "
                              f"{excerpt(spec.identity().get(key), 60)}); pass --target-dir "
                              "with another folder")
        return
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"--target-dir {folder} is a file, not a folder; choose a folder")
    os.makedirs(folder, exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(spec.to_dict(), f, indent=1)
        f.write("\n")


# --------------------------------------------------------------------------- resolving

@dataclass
class Opened:
    """A resolved spec with what it opened: the network, the data source and its info."""
    spec: TargetSpec
    model: Any
    layers: list                # LayerPoints
    outputs: int
    info: Any                   # the data's DatasetInfo, normalisation as the spec says
    loader_info: Any = None     # the data's own DatasetInfo (channels as stored)
    source: Any = None
    extra: dict = field(default_factory=dict)


def build_network(spec: TargetSpec, seed: int):
    """The network ``spec`` names with its weights (``zoo.ExternalModel``); one without
    weights is initialised from ``seed``, so the same target is the same network."""
    from seltrain.models.zoo import build_external

    torch.manual_seed(seed)
    return build_external(spec.model, spec.weights)


def check_weights(spec: TargetSpec, ext) -> None:
    """A recorded target must still have the weights it was made with."""
    if spec.weights_sha256 and ext.weights_sha256 != spec.weights_sha256:
        raise CheckpointError(f"{ext.weights_file} has changed since this target was made "
                              f"(sha256 {ext.weights_sha256[:12]}..., recorded "
                              f"{spec.weights_sha256[:12]}...); restore it, or open the new "
                              "weights as a new target (--target-dir)")


def layer_table(model, size: int, channels: int):
    """(layers with their points, the network's output count) at ``size`` px."""
    from seltrain.models.graph_points import find_layers

    try:
        return find_layers(model, torch.zeros(1, channels, size, size))
    except Exception as e:  # noqa: BLE001 - the user's network failing on the input size
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{type(model).__name__} cannot run on {channels} x {size} x {size} "
                          f"images ({type(e).__name__}: {why[:200]}); pass --image-size or "
                          "--data with images it takes") from None


def open_spec(spec: TargetSpec, split: str, seed: int = 0) -> Opened:
    """Build the network and open the data of ``spec``: a resolved copy of the spec (every
    default filled in), the network (not yet ``Probed``) and the data source."""
    from seltrain.config import Config
    from seltrain.data import open_source
    from seltrain.data.sources import IMAGENET_MEAN, IMAGENET_STD, load_class_folders

    if not spec.data:
        raise ConfigError("--model needs --data: imagefolder:DIR, or a dataset seltrain reads "
                          f"({', '.join(DATASETS[1:])})")
    name, root = parse_data(spec.data)
    ext = build_network(spec, seed)
    check_weights(spec, ext)
    cfg = Config()
    cfg.data.dataset, cfg.data.root = name, root
    cfg.data.loader, cfg.data.on_device, cfg.data.download = "torch", False, False
    flat = None
    if name == "imagefolder" and not os.path.isdir(os.path.join(root, "train")):
        flat = os.path.join(root, "val") if os.path.isdir(os.path.join(root, "val")) else root
        if split == "val":
            raise ConfigError(f"--split val: {root} has no train/ folder to carve a "
                              "validation split from; use --split test (its class folders)")
    size = spec.image_size or ext.crop_size
    if flat:
        info, fsplit = load_class_folders(flat)
        source = None
    else:
        cfg.data.image_size = size if name in ("imagefolder", "tinyimagenet") else None
        try:
            source = open_source(cfg, (split,))
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"cannot read the {name} {split} split ({e}); check --data") \
                from None
        info = source.info
        fsplit = None
    native = source.image_size if source is not None else info.image_size
    size = size or native
    torchvision = ext.is_torchvision
    mean = spec.mean or ext.mean or (IMAGENET_MEAN if torchvision else info.mean)
    std = spec.std or ext.std or (IMAGENET_STD if torchvision else info.std)
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise ConfigError(f"--mean/--std: give 1 or 3 values each, as many for both (got "
                          f"{len(mean)} and {len(std)})")
    if len(mean) < info.channels:
        raise ConfigError(f"--mean/--std: the data has {info.channels} channels; give "
                          f"{info.channels} values each")
    resize = spec.resize_size or (ext.resize_size if ext.resize_size
                                  and ext.resize_size != round(size / 0.875) else None)
    channels = max(info.channels, len(mean))  # gray images meet RGB statistics: replicated
    layers, outputs = layer_table(ext.model, size, channels)
    classes = None
    if spec.classes is not None:
        classes = dict(spec.classes)
    elif spec.class_map:
        classes = read_class_map(spec.class_map, info.class_names, outputs)
    elif outputs != info.num_classes:
        raise ConfigError(f"the data has {info.num_classes} classes but {spec.model} has "
                          f"{outputs} outputs; pass --class-map FILE (data class -> output "
                          "index, e.g. for a subset of ImageNet's classes)")
    module, _, attr = spec.model.partition(":")
    model = f"{os.path.abspath(module)}:{attr}" if module.endswith(".py") else spec.model
    resolved = dataclasses.replace(
        spec, model=model, data=f"{name}:{root}" if root else name, image_size=size, resize_size=resize,
        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
        weights=ext.weights_file if ext.weights_file and spec.weights
        and os.path.exists(spec.weights) else spec.weights,
        class_map=os.path.abspath(spec.class_map) if spec.class_map else None,
        weights_sha256=ext.weights_sha256, init_seed=None if spec.weights else seed,
        classes=classes)
    shown = dataclasses.replace(info, mean=resolved.mean, std=resolved.std, image_size=size,
                                channels=channels)
    opened = Opened(resolved, ext.model, layers, outputs, shown, loader_info=info,
                    source=source, extra={"cfg": cfg, "flat": fsplit, "ext": ext})
    return opened


# Evaluation batches: large images through a large network need a smaller batch on a CPU.
BATCH_SMALL_IMAGES, BATCH_LARGE_IMAGES, LARGE_PX = 512, 64, 96
# Below this many images the loader decodes in the analysing process (no worker start-up).
WORKERLESS_IMAGES = 1024


def open_target(spec: TargetSpec, folder: str | None, opts):
    """The ``Target`` of ``spec`` (module docstring) on ``opts.device``, with the split and
    layers ``opts`` asks for (default: group ``blocks``, the top-level layers); its folder
    (default ``runs/targets/<model>-<weights stem>``) gets target.json."""
    import numpy as np

    from seltrain.analysis.target import NormalisedBatches, Target, pick_device
    from seltrain.data import DevicePreprocess, build_eval_loader
    from seltrain.data.loaders import FileLoader, RankSharding
    from seltrain.models.graph_points import as_probed, fold_activations
    from seltrain.probes import resolve_layers

    device = pick_device(opts.device)
    if opts.data_root:
        raise ConfigError("--data-root applies to a trained run's recipe; with a network "
                          "seltrain did not train, give the folder in --data DATASET:DIR")
    o = open_spec(spec, opts.split, spec.init_seed or 0)
    folder = os.path.abspath(folder or os.path.join(DEFAULT_ROOT, o.spec.folder_name()))
    size, cfg = o.spec.image_size, o.extra["cfg"]
    cfg.train.eval_batch_size = BATCH_LARGE_IMAGES if size > LARGE_PX else BATCH_SMALL_IMAGES
    flat = o.extra["flat"]
    n = len(flat) if flat is not None else None
    if flat is not None:
        loader = FileLoader(flat, np.arange(n), cfg.train.eval_batch_size, train=False,
                            info=o.loader_info, sharding=RankSharding(), size=size,
                            augment=False, resize=o.spec.resize_size,
                            num_workers=0 if n <= WORKERLESS_IMAGES else cfg.data.num_workers)
    else:
        o.source.resize = o.spec.resize_size
        if hasattr(o.source, "splits"):
            images = sum(len(s) for s in o.source.splits.values())
            cfg.data.num_workers = 0 if images <= WORKERLESS_IMAGES else cfg.data.num_workers
        loader = build_eval_loader(cfg, opts.split, source=o.source)
    order = None
    if o.spec.classes is not None:
        order = output_order(o.spec.classes, o.info.class_names, o.outputs)
        if torch.equal(order, torch.arange(o.outputs)):
            order = None  # the identity: nothing to reorder
    model = as_probed(o.model, o.layers, order)
    fold_activations(model, o.layers)
    model = model.to(device).eval()
    pre = DevicePreprocess(o.info, device)
    layers = resolve_layers(model, opts.layers or ["blocks"], option="--layers",
                            any_module=True)
    claim_folder(folder, o.spec)  # once everything has been checked
    ext = o.extra["ext"]
    return Target(run_dir=folder, ckpt_path=ext.weights_file or os.path.join(folder, TARGET_FILE),
                  model=model, ckpt={"layer_names": model.probe_groups()["blocks"],
                                     "target": o.spec.to_dict()},
                  cfg=cfg, info=o.info,
                  data=NormalisedBatches(loader, pre, opts.max_images or None, size=size),
                  device=device, image_size=size, layers=layers, split=opts.split,
                  spec=o.spec)
