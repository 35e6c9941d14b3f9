"""Typed training recipes: YAML files in configs/ loaded into dataclasses, with overrides.

``load_config("configs/x.yaml", ["train.lr=0.05", "selectivity.alpha=-1"])`` returns a
``Config``. Every mistake is a ``ConfigError`` (one line, exit code 2) naming the key and where
it came from: unknown keys get a close-match suggestion, values are type-checked against the
dataclass annotations, and names with a fixed set of choices are checked against it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import yaml

from seltrain import alpha_schedule
from seltrain.alpha_schedule import AlphaScheduleConfig
from seltrain.errors import ConfigError, did_you_mean, excerpt
from seltrain.recipe_yaml import _DuplicateKey, _TooLarge, safe_yaml


def choice(default, choices: tuple, **kw):
    return field(default=default, metadata={"choices": choices}, **kw)


@dataclass(frozen=True)
class SyntheticConfig:
    """The generated dataset (``data.dataset: synthetic``, ``seltrain.data.sources``), also
    what keys its cache there: frozen, so hashable. The config's and the data's one type."""
    num_classes: int = 10
    image_size: int = 32
    channels: int = 3
    train_size: int = 2048
    test_size: int = 512
    seed: int = 0


@dataclass
class FFCVConfig:
    """Per-split .beton files for ``data.loader: ffcv`` (see ``seltrain data write``)."""
    train: Optional[str] = None
    val: Optional[str] = None
    test: Optional[str] = None
    order: str = choice("random", ("random", "quasi_random"))
    os_cache: bool = True
    drop_last_train: bool = True
    # Evaluation must see every sample exactly once, so it never drops a partial batch.
    drop_last_eval: bool = False


@dataclass
class DataConfig:
    dataset: str = choice("synthetic", ("synthetic", "fashion_mnist", "cifar10", "cifar100",
                                        "tinyimagenet", "imagefolder"))
    root: Optional[str] = None
    download: bool = False
    loader: str = choice("torch", ("torch", "ffcv"))
    # Held-out validation carved from train: a count, or a fraction of train when < 1.
    val_size: Union[int, float] = 0.1
    split_seed: int = 0
    num_workers: int = 2
    augment: bool = True
    # Train on the first N samples of the (shuffled) train split only: quick experiments.
    limit_train: Optional[int] = None
    # Resolution for file-based ImageNet-style data (imagefolder); None = dataset native.
    image_size: Optional[int] = None
    # Datasets held in memory (synthetic, fashion_mnist, cifar10/100) with loader torch: keep
    # the uint8 train and test sets in the device's memory and crop, flip and normalise them
    # there (the same batches as on the host, bit for bit). auto: on with CUDA when both sets
    # fit in a quarter of the GPU's free memory (seltrain.data.loaders.ON_DEVICE_SHARE).
    on_device: Union[bool, str] = choice("auto", ("auto", True, False))
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    ffcv: FFCVConfig = field(default_factory=FFCVConfig)


@dataclass
class ModelConfig:
    arch: str = choice("resnet20", ("resnet20", "resnet56", "resnet18", "resnet50", "cnn7",
                                    "vgg16_bn", "vgg16"))
    # Dropout probability after the hidden fully connected layers of vgg16, vgg16_bn and cnn7
    # (seltrain/models/__init__.py, DROPOUT_ARCHS); null: the architecture's own.
    dropout: Optional[float] = None
    # resnet18/50's stem: auto (cifar up to 96 px, imagenet above), cifar (3x3 stride 1, no
    # max-pool), nomaxpool (7x7 stride 2), imagenet (torchvision's; seltrain/models/resnet_tv.py).
    stem: str = choice("auto", ("auto", "cifar", "nomaxpool", "imagenet"))


@dataclass
class SelectivityConfig:
    # loss = CE - alpha * mean SI (Leavitt & Morcos 2021, eq. 2): < 0 lowers SI, > 0 raises it.
    alpha: float = 0.0
    # alpha per epoch (Ranadive et al. 2023's "regularizing late"): seltrain/alpha_schedule.py.
    alpha_schedule: AlphaScheduleConfig = field(default_factory=AlphaScheduleConfig)
    layers: Union[str, list[str]] = "blocks"
    # mu_SI over layers: block = every probed layer alike; stage = the co-authors' (pool a
    # stage's units, average the stages). seltrain.selectivity.layer_weights says why.
    layer_mean: str = choice("block", ("block", "stage"))
    eps: float = 1e-7
    # Batch SI from the global batch (statistics all-reduced) or from each rank's slice.
    sync: str = choice("global", ("global", "local"))
    # Shrinking the global payload for many classes: send only classes present in the
    # global batch, and/or send it as bf16 (docs/distributed.md, "Global selectivity statistics").
    sync_present_only: bool = False
    sync_bf16: bool = False
    # Exact dataset-level SI on val and test after every epoch.
    eval_si: bool = True


@dataclass
class TrainConfig:
    epochs: int = 10
    # The global batch: split evenly across ranks when there are several.
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = choice("sgd", ("sgd", "adam"))
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    wd_exclude_bn_bias: bool = True
    schedule: str = choice("multistep", ("multistep", "cosine", "onecycle", "constant"))
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    grad_clip: Optional[float] = None
    seed: int = 0
    deterministic: bool = True
    # cuDNN benchmarking: auto = on when CUDA is present and deterministic is off (fastest
    # conv kernels, chosen by timing, so runs differ in the last bits; docs/training.md,
    # "On a GPU").
    cudnn_benchmark: Union[bool, str] = choice("auto", ("auto", True, False))
    eval_batch_size: int = 512
    # When to evaluate the test split: after every epoch, or only after the epochs whose
    # validation accuracy beats every earlier one (the epochs a run's best record can come
    # from), which is what a sweep needs and saves most of its evaluation time. Without a
    # validation split the test split is the selection metric and is evaluated every epoch.
    eval_test: str = choice("every_epoch", ("every_epoch", "at_best"))
    # Cap on steps per epoch: smoke tests and quick looks at big datasets.
    max_steps_per_epoch: Optional[int] = None
    engine: str = choice("ddp", ("ddp", "deepspeed"))
    sync_bn: bool = False
    # DeepSpeed JSON (configs/deepspeed/*.json) or an inline dict; batch sizes are derived.
    deepspeed_config: Optional[str] = None
    deepspeed_inline: Optional[dict] = None


@dataclass
class RunConfig:
    out_dir: str = "runs"
    # "auto" names the run from arch, dataset, alpha and seed.
    name: str = "auto"
    tensorboard: bool = True
    progress: bool = True
    # Per-epoch mean OSI per layer (orientation tracking; `seltrain analyze orientation`).
    track_orientation: bool = False
    # 0-based epochs whose checkpoint is kept as checkpoints/epoch_NNN.pt besides last.pt and
    # best.pt (analyses early in training, Ranadive et al. 2023; seltrain.checkpoint).
    keep_epochs: list[int] = field(default_factory=list)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    selectivity: SelectivityConfig = field(default_factory=SelectivityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def run_name(self) -> str:
        if self.run.name != "auto":
            return self.run.name
        return (f"{self.model.arch}_{self.data.dataset}_alpha{self.selectivity.alpha:g}"
                f"{alpha_schedule.name_suffix(self.selectivity.alpha_schedule)}"
                f"_seed{self.train.seed}")

    def run_dir(self) -> str:
        return os.path.join(self.run.out_dir, self.run_name())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def flat_keys(data: dict, prefix: str = "") -> dict:
    """A recipe dict as {dotted key: value}; ``train.deepspeed_inline`` stays one value (a
    DeepSpeed config, not recipe keys)."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and k != "deepspeed_inline":
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------- loading

class _NotFinite(ConfigError):
    """nan/inf for a float key: decisive even inside Optional/Union types."""


# Allowed values of every numeric key whose range is obvious: (what the message says, test).
# None passes for Optional keys (the message says "or null"); floats are finite already.
# tests/unit_tests/test_config.py holds every int/float key to its range at both edges.
def max_workers() -> int:
    """The most data.num_workers this machine takes: 4 loader processes per CPU it may use,
    and never fewer than 32, so a recipe written for a bigger node still loads here."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(32, 4 * cpus)


def _at_least(lo):
    return lambda v: v >= lo


RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "data.val_size": ("a count >= 0 or a fraction in [0, 1)",
                      lambda v: v >= 0 and not (isinstance(v, float) and v >= 1)),
    "data.split_seed": (">= 0", _at_least(0)),
    "data.num_workers": (f"in [0, {max_workers()}] on this machine (4 per CPU, at least 32)",
                         lambda v: 0 <= v <= max_workers()),
    "data.limit_train": (">= 1 or null", _at_least(1)),
    "data.image_size": (">= 1 or null", _at_least(1)),
    "data.synthetic.num_classes": (">= 2", _at_least(2)),
    "data.synthetic.image_size": (">= 4", _at_least(4)),
    "data.synthetic.channels": ("1 or 3", lambda v: v in (1, 3)),
    "data.synthetic.train_size": (">= 1", _at_least(1)),
    "data.synthetic.test_size": (">= 1", _at_least(1)),
    "data.synthetic.seed": (">= 0", _at_least(0)),
    "selectivity.alpha": ("a finite number", lambda v: True),
    "selectivity.eps": ("> 0", lambda v: v > 0),
    "model.dropout": ("in [0, 1) or null (the architecture's own)", lambda v: 0 <= v < 1),
    **alpha_schedule.RANGES,
    "train.epochs": (">= 1", _at_least(1)),
    "train.batch_size": (">= 1", _at_least(1)),
    "train.lr": ("> 0", lambda v: v > 0),
    "train.momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "train.weight_decay": (">= 0", _at_least(0)),
    "train.milestones": ("a list of epochs >= 1", lambda v: all(m >= 1 for m in v)),
    "train.gamma": ("> 0", lambda v: v > 0),
    "train.warmup_epochs": (">= 0", _at_least(0)),
    "train.label_smoothing": ("in [0, 1)", lambda v: 0 <= v < 1),
    "train.grad_clip": ("> 0 or null (no clipping)", lambda v: v > 0),
    "train.seed": (">= 0", _at_least(0)),
    "train.eval_batch_size": (">= 1", _at_least(1)),
    "train.max_steps_per_epoch": (">= 1 or null (whole epochs)", _at_least(1)),
    "run.keep_epochs": ("a list of epochs >= 0 (epochs count from 0)",
                        lambda v: all(e >= 0 for e in v)),
}


def _check_range(key: str, val, src: str) -> None:
    rule = RANGES.get(key)
    if rule is None or val is None:
        return
    what, ok = rule
    if not ok(val):
        raise ConfigError(f"{key} must be {what}, got {excerpt(val)} ({src})")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str, where: str):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except _NotFinite:
                raise
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {' or '.join(_type_name(a) for a in args)}, got "
                          f"{excerpt(value)} ({where})")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {excerpt(value)} ({where})")
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {excerpt(value)} ({where})")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-7" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            # nan/inf would pass every range check below and poison training much later.
            if not math.isfinite(number):
                raise _NotFinite(f"{key} must be a finite number, got {excerpt(value)} ({where})")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {excerpt(value)} ({where})")


def build_dataclass(cls, data: dict, prefix: str = "", where: dict[str, str] | None = None,
                    default_where: str = "in config"):
    """``cls(**data)`` with every key and value checked, nested dataclasses built too.

    Unknown keys get a close-match hint, values are coerced and type-checked against the
    annotations, choices and numeric ranges are enforced. ``prefix`` is the dotted path of
    ``data`` (for messages), ``where`` maps a dotted key to where its value came from (an
    override, say), ``default_where`` names the source of every other key. Search recipes
    (seltrain.tuning) are parsed with it too, with the same strictness.
    """
    where = where if where is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got "
                          f"{excerpt(data)} ({default_where})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        src = where.get(key, default_where)
        if k not in fields:
            raise ConfigError(f"unknown key '{key}' ({src}){did_you_mean(k, fields, prefix)}")
        tp = hints[k]
        section, optional = _section_type(tp)
        if section is not None:
            if v is None and optional:  # Optional[<dataclass>]: absent
                kwargs[k] = None
                continue
            if v is None:  # `data=` or an empty `data:`: never fall back to the defaults
                raise ConfigError(f"section '{key}' is empty ({src}); give its keys "
                                  f"({key}.<key>=value) or leave the section out")
            kwargs[k] = build_dataclass(section, v, key + ".", where, default_where)
            continue
        val = _coerce(v, tp, key, src)
        choices = fields[k].metadata.get("choices")
        if choices and val not in choices:
            hint = did_you_mean(val, choices)
            what = {"model.arch": "model", "data.dataset": "dataset"}.get(key, "value")
            raise ConfigError(f"unknown {what} '{val}' for {key} ({src}){hint}; choose one of: "
                              f"{', '.join(map(str, choices))}")
        _check_range(key, val, src)
        kwargs[k] = val
    return cls(**kwargs)


def _section_type(tp) -> tuple[type | None, bool]:
    """(the dataclass a field holds, whether it is Optional): ``X`` -> (X, False),
    ``Optional[X]`` -> (X, True), anything else -> (None, False)."""
    if dataclasses.is_dataclass(tp):
        return tp, False
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0], True
    return None, False


def shown(text: str, limit: int = 80) -> str:
    """A user's text as an error quotes it: cut to ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{shown(text)}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{shown(text)}' has no key; write key.sub=value")
    try:
        value = safe_yaml(raw, f"override '{shown(text)}'") if raw.strip() else None
    except (_TooLarge, _DuplicateKey) as e:
        raise ConfigError(str(e)) from None
    except yaml.YAMLError:
        value = raw
    return key, value


def get_dotted(data: dict, key: str, default=None):
    """``data["a"]["b"]`` for ``key`` "a.b"; ``default`` where the path does not exist."""
    node = data
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node


def set_dotted(data: dict, key: str, value, *, create: bool = True,
               where: str = "override") -> list[str]:
    """``data["a"]["b"] = value`` for ``key`` "a.b".

    ``create``: missing or non-mapping sections on the way are made (an override may add a
    key the recipe left at its default; the typed build checks it later). Without it every
    part must exist already: a searched key that is not a recipe key is an unknown-key error
    here, with the hint. Returns the dotted sections it created.
    """
    parts, node, made = key.split("."), data, []
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            if not create:
                raise ConfigError(f"unknown key '{key}' ({where})"
                                  f"{did_you_mean(p, node, '.'.join(parts[:i] + ['']))}")
            nxt = node[p] = {}
            made.append(".".join(parts[:i + 1]))
        node = nxt
    if not create and parts[-1] not in node:
        raise ConfigError(f"unknown key '{key}' ({where})"
                          f"{did_you_mean(parts[-1], node, '.'.join(parts[:-1] + ['']))}")
    node[parts[-1]] = value
    return made


def apply_overrides(data: dict, overrides: list[str], where: dict[str, str]) -> dict:
    for text in overrides:
        key, value = parse_override(text)
        src = f"override '{shown(text)}'"
        # train.lr.x=1 turns train.lr into a section: an error about it is this override's,
        # not the recipe's.
        for section in set_dotted(data, key, value):
            where[section] = src
        where[key] = src
    return data


def read_yaml(path: str) -> dict:
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder, not a recipe file; give a YAML such as "
                          "configs/quickstart.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = safe_yaml(f, path)
    except (_TooLarge, _DuplicateKey) as e:
        raise ConfigError(str(e)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a text YAML file (binary byte at offset {e.start}); "
                          "give a recipe such as configs/quickstart.yaml") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path} is not valid YAML{at}: {problem}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    if data is None:
        # An empty recipe would silently train the defaults: almost surely the wrong file.
        raise ConfigError(f"{path} is empty; a recipe needs at least one section (data, model, "
                          "selectivity, train, run), e.g. configs/quickstart.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of sections (data, model, ...)")
    return data


def load_config(path: str | None, overrides: list[str] | None = None) -> Config:
    """Load a recipe (or the defaults when ``path`` is None) and apply ``key.sub=value``."""
    data = read_yaml(path) if path else {}
    where: dict[str, str] = {}
    apply_overrides(data, list(overrides or []), where)
    cfg = build_dataclass(Config, data, "", where, f"in {path}" if path else "in defaults")
    validate(cfg)
    if cfg.data.root:
        # Stored resolved (config.yaml, checkpoints): an analysis run from another folder
        # must find the same data. `seltrain analyze --data-root` still points elsewhere.
        cfg.data.root = os.path.abspath(os.path.expanduser(cfg.data.root))
    return cfg


def config_from_dict(data: dict, where: str = "in saved config") -> Config:
    """Rebuild a Config saved as a dict (checkpoints, Ray trials); same checks as files.
    ``where`` names the source in error messages (a search recipe's space, for instance)."""
    cfg = build_dataclass(Config, data, "", {}, where)
    validate(cfg)
    return cfg


def has_control_character(text: str) -> bool:
    """Whether ``text`` holds a C0/C1 control character (tab, newline, escape, DEL, ...):
    never wanted in a folder name, and invisible or garbling when printed."""
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    # Single values are checked where they are built (RANGES in build_dataclass).
    t = cfg.train
    if t.milestones and sorted(t.milestones) != t.milestones:
        raise ConfigError(f"train.milestones must be increasing, got {t.milestones}")
    alpha_schedule.check(cfg.selectivity.alpha_schedule, t.epochs)
    keep = cfg.run.keep_epochs
    if keep and (sorted(set(keep)) != keep or keep[-1] >= t.epochs):
        raise ConfigError(f"run.keep_epochs must be increasing epochs, each below "
                          f"train.epochs={t.epochs} (epochs count from 0), got {keep}; "
                          f"give e.g. [0, 1, 2, 5]")
    name = cfg.run.name
    if has_control_character(name):
        raise ConfigError(f"run.name must not hold control characters (tabs, newlines, escapes), "
                          f"got {excerpt(name)}; it names a folder")
    if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        raise ConfigError(f"run.name must be a plain folder name inside run.out_dir (no '/', "
                          f"not '.' or '..'), got {excerpt(name)}; put the folder in run.out_dir")
    if t.cudnn_benchmark is True and t.deterministic:
        raise ConfigError("train.cudnn_benchmark=true picks conv kernels by timing, which "
                          "train.deterministic=true rules out; set one of them false (or "
                          "cudnn_benchmark=auto)")
    d = cfg.data
    if d.on_device is True and (d.loader != "torch" or d.dataset in ("tinyimagenet",
                                                                      "imagefolder")):
        raise ConfigError(f"data.on_device=true holds a dataset in device memory, which works "
                          f"for synthetic, fashion_mnist, cifar10 and cifar100 with "
                          f"data.loader=torch (not {d.dataset} with {d.loader}); set "
                          "data.on_device=auto or false")
    if cfg.data.loader == "ffcv" and not cfg.data.ffcv.train:
        raise ConfigError("data.loader is ffcv but data.ffcv.train is not set; write the "
                          "splits with `seltrain data write` and set data.ffcv.train/val/test")
