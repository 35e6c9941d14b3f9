"""Search recipes (``tune/*.yaml``): the schema, parsing, and the trials they enumerate.

A search recipe names a base training recipe, the space (grid values or sampled distributions
over any ``section.key`` of the training recipe), the seeds, the metric, the scheduler (ASHA or
none), the resources of one trial, and where results go. It is parsed with the same strictness
as training recipes (``seltrain.config.build_dataclass``): an unknown key, an empty space, a
searched key that is not a recipe key or a value the recipe refuses is one line and exit code 2.

Typed once: ``load_search`` returns the recipe and the base training ``Config``;
``trial_config`` gives each trial its own ``Config`` (the base with the trial's values set,
checked again). Nothing here imports Ray.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from seltrain.config import (Config, build_dataclass, choice, config_from_dict, get_dotted,
                             has_control_character, load_config, parse_override, read_yaml,
                             set_dotted)
from seltrain.errors import ConfigError, did_you_mean, excerpt, file_in_the_way
from seltrain.tuning.resources import ResourcesConfig, check_resources_spec

_SELTRAIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(_SELTRAIN_DIR)
# Search and training recipes ship inside the package (pyproject's package-data), so
# `--search alpha` works from an installed seltrain too; in the repo these are symlinks.
PACKAGE_RECIPES = os.path.join(_SELTRAIN_DIR, "_recipes")

METRICS = ("val_acc", "test_acc", "test_si", "val_si", "train_loss", "train_ce")
# Every trial searches these keys besides the space's: its seed.
SEED_KEY = "train.seed"


@dataclass
class LogGrid:
    """``num`` log-spaced magnitudes in [min, max], with both signs (and 0 when ``zero``)."""
    min: float = 0.1
    max: float = 100.0
    num: int = 4
    zero: bool = True
    signs: str = choice("both", ("both", "negative", "positive"))


@dataclass
class SpaceSpec:
    """Exactly one of these per searched key. ``grid``/``signed_log`` enumerate values;
    the rest are sampled ``num_samples`` times per seed."""
    # int before float: the builder takes the first type a value fits, and float takes ints,
    # so [1, 2] would become [1.0, 2.0], which an int key (train.epochs) refuses.
    grid: Optional[list[Union[int, float, str, bool]]] = None
    signed_log: Optional[LogGrid] = None
    choice: Optional[list[Union[int, float, str, bool]]] = None
    uniform: Optional[list[float]] = None
    loguniform: Optional[list[float]] = None
    # A random sign times a log-uniform magnitude in [lo, hi]: both signs of alpha.
    signed_loguniform: Optional[list[float]] = None

    def kind(self) -> str:
        return next(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def values(self) -> list | None:
        """The enumerated values, or None for a sampled distribution."""
        if self.grid is not None:
            return list(self.grid)
        if self.signed_log is not None:
            g = self.signed_log
            mags = ([g.min] if g.num == 1 else
                    [g.min * (g.max / g.min) ** (i / (g.num - 1)) for i in range(g.num)])
            mags = [float(f"{m:.3g}") for m in mags]  # -31.6227... reads better as -31.6
            neg = [-m for m in reversed(mags)] if g.signs in ("both", "negative") else []
            pos = mags if g.signs in ("both", "positive") else []
            return neg + ([0.0] if g.zero else []) + pos
        return None

    def describe(self) -> str:
        k = self.kind()
        vals = self.values()
        return f"{vals}" if vals is not None else f"{k}{tuple(getattr(self, k))}"


@dataclass
class SchedulerConfig:
    type: str = choice("none", ("none", "asha"))
    # ASHA (Li et al. 2020): rungs at grace_period * reduction_factor^k epochs; at each rung a
    # trial continues only if it is in the top 1/reduction_factor of the trials seen there.
    grace_period: int = 1
    reduction_factor: int = 2
    max_t: Optional[int] = None  # None = the base recipe's train.epochs


@dataclass
class SearchRecipe:
    # The training recipe every trial starts from; required (a search of the wrong base
    # would run to the end before anyone noticed).
    base: Optional[str] = None
    name: Optional[str] = None  # experiment folder name; None = the recipe's file name
    space: dict[str, SpaceSpec] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    num_samples: int = 1  # draws per seed when the space holds sampled distributions
    metric: str = "val_acc"
    mode: str = choice("max", ("max", "min"))
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_concurrent_trials: int = 2
    # A local folder, a shared (NFS) path every node mounts, or s3://bucket/prefix.
    storage: str = "runs/tune"
    # Where trial run folders (TensorBoard, metrics) go; None = <storage>/<name>/trials. Must be
    # a filesystem path: set it to an NFS mount when storage is s3://.
    trials_dir: Optional[str] = None
    max_failures: int = 1
    # key.sub=value overrides of the base recipe, applied before the command line's --set.
    overrides: list[str] = field(default_factory=list)
    path: str = ""  # resolved by load_search

    @property
    def is_uri(self) -> bool:
        return "://" in self.storage

    @property
    def exp_dir(self) -> str:
        return self.storage.rstrip("/") + "/" + self.name if self.is_uri else \
            os.path.join(self.storage, self.name)

    @property
    def trial_root(self) -> str:
        if self.trials_dir:
            return os.path.join(os.path.abspath(os.path.expanduser(self.trials_dir)), self.name)
        if self.is_uri:
            return os.path.join(os.path.expanduser("~/seltrain_trials"), self.name)
        return os.path.join(self.exp_dir, "trials")

    @property
    def keys(self) -> list[str]:
        """What tells one trial from another: the searched keys, then the seed."""
        return list(self.space) + [SEED_KEY]

    def sampled(self) -> bool:
        return any(s.values() is None for s in self.space.values())

    @property
    def samples_per_point(self) -> int:
        """How often each grid point and seed is run: num_samples repeats sampled keys only."""
        return self.num_samples if self.sampled() else 1


# --------------------------------------------------------------------------- finding it

def find_search(name: str) -> str:
    """``alpha`` -> tune/alpha.yaml from the current repo, else from the installed package."""
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        if not os.path.isfile(name):
            raise ConfigError(f"search recipe not found: {name}")
        return name
    for root in (os.getcwd(), REPO_ROOT, PACKAGE_RECIPES):
        path = os.path.join(root, "tune", f"{name}.yaml")
        if os.path.isfile(path):
            return path
    known = sorted({os.path.splitext(f)[0] for root in (os.getcwd(), PACKAGE_RECIPES)
                    if os.path.isdir(os.path.join(root, "tune"))
                    for f in os.listdir(os.path.join(root, "tune")) if f.endswith(".yaml")})
    raise ConfigError(f"no search recipe '{name}' in tune/{did_you_mean(name, known)}; known: "
                      f"{', '.join(known)}")


def _find_base(base: str, recipe_path: str) -> str:
    if os.path.isabs(base):
        return base
    recipe_dir = os.path.dirname(os.path.abspath(recipe_path))
    for root in (recipe_dir, os.path.dirname(recipe_dir), os.getcwd(), REPO_ROOT,
                 PACKAGE_RECIPES):
        path = os.path.normpath(os.path.join(root, base))
        if os.path.isfile(path):
            return path
    raise ConfigError(f"base recipe '{base}' of {recipe_path} not found (looked beside the "
                      "search recipe, in the repo and in the installed package)")


# --------------------------------------------------------------------------- parsing it

def load_search(name: str, overrides: list[str] | None = None, *, storage: str | None = None,
                exp_name: str | None = None, seeds: str | None = None,
                grids: Sequence[str] = ()) -> tuple[SearchRecipe, Config]:
    """(recipe, base training Config) with every value checked.

    ``seeds`` ("0,1", ``--seeds``) replaces the recipe's seeds; each of ``grids`` ("KEY=V1,V2",
    ``--grid``) replaces a searched key's values by that grid: a recipe tried small first."""
    path = find_search(name)
    data = read_yaml(path)
    where = f"in {path}"
    space = data.pop("space", None)
    recipe = build_dataclass(SearchRecipe, data, "", {}, where)
    recipe.space = _parse_space(space, where)
    _check_recipe(recipe, where)
    if "path" in data:
        raise ConfigError(f"unknown key 'path' ({where})")
    recipe.path = os.path.abspath(path)
    recipe.overrides = list(recipe.overrides) + list(overrides or [])
    if exp_name is not None:
        _check_name(exp_name, "--name")
    elif recipe.name is not None:
        _check_name(recipe.name, f"name ({where})")
    recipe.name = exp_name or recipe.name or os.path.splitext(os.path.basename(path))[0]
    if storage:
        recipe.storage = storage
    if not recipe.is_uri:
        recipe.storage = os.path.abspath(os.path.expanduser(recipe.storage))
        blocker = file_in_the_way(recipe.exp_dir)
        if blocker:
            raise ConfigError(f"storage {recipe.storage}: {blocker} is a file, not a folder; "
                              f"set storage (or --storage) to a folder")
    if not recipe.base:
        raise ConfigError(f"base is missing ({where}); name the training recipe every trial "
                          "starts from, e.g. base: configs/quickstart.yaml")
    recipe.base = _find_base(recipe.base, path)
    base = load_config(recipe.base, recipe.overrides)
    _narrow(recipe, base, seeds, grids)
    _check_against_base(recipe, base, path)
    return recipe, base


def _narrow(recipe: SearchRecipe, base: Config, seeds: str | None, grids: Sequence[str]) -> None:
    """``--seeds`` and ``--grid`` applied to the recipe, each value checked against the base
    recipe here so that a bad one is blamed on the option that gave it, not on the file."""
    if seeds is not None:
        try:
            recipe.seeds = [int(s) for s in seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds must be whole numbers separated by commas, e.g. "
                              f"--seeds 0,1; got {excerpt(seeds)}") from None
        twice = _repeated(recipe.seeds)
        if twice:
            raise ConfigError(f"--seeds gives {', '.join(map(str, twice))} more than once; a "
                              "repeated seed runs the same trials twice: list each seed once")
        for seed in recipe.seeds:
            trial_config(base, {SEED_KEY: seed}, where="--seeds")
    for text in grids:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"--grid {excerpt(text)} must look like KEY=V1,V2 (a searched "
                              f"key of {os.path.basename(recipe.path)}: "
                              f"{', '.join(recipe.space)})")
        if key not in recipe.space:
            raise ConfigError(f"--grid {key}: not a searched key of {recipe.path}"
                              f"{did_you_mean(key, recipe.space)}; the recipe searches "
                              f"{', '.join(recipe.space)} (set other keys with --set)")
        values = []
        for item in raw.split(","):
            _, value = parse_override(f"{key}={item}")
            # The value as the training recipe types it (0 -> 0.0 for alpha), so trial names,
            # Tune's config and each trial's config.yaml agree; a value of the wrong type is
            # refused here, naming --grid.
            cfg = trial_config(base, {key: value}, where=f"--grid {key}")
            values.append(get_dotted(cfg.to_dict(), key))
        twice = _repeated(values)
        if twice:
            raise ConfigError(f"--grid {key} gives {', '.join(map(excerpt, twice))} more than "
                              "once; each value makes its own trials: list each value once")
        recipe.space[key] = SpaceSpec(grid=values)


def _check_name(name: str, what: str) -> None:
    """An experiment name is one folder inside the storage: never a path out of it."""
    if not name or name in (".", "..") or "/" in name or os.sep in name \
            or (os.altsep and os.altsep in name) or has_control_character(name):
        raise ConfigError(f"{what} must be a plain folder name inside the storage (no '/', not "
                          f"'.' or '..', no control characters), got {excerpt(name)}; set "
                          "storage (or --storage) to choose where experiments go")


def _repeated(values: list) -> list:
    """The values that appear more than once (1 and 1.0 count as the same)."""
    seen, twice = [], []
    for v in values:
        if v in seen and v not in twice:
            twice.append(v)
        seen.append(v)
    return twice


def _parse_space(space, where: str) -> dict[str, SpaceSpec]:
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"space is empty ({where}); give at least one key, e.g. "
                          "space: {selectivity.alpha: {grid: [-1, 0, 1]}}")
    out = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            spec = {"grid": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"space.{key} must be a list of values or a mapping such as "
                              f"{{grid: [...]}}, got {excerpt(spec)} ({where})")
        s = build_dataclass(SpaceSpec, spec, f"space.{key}.", {}, where)
        given = [f.name for f in dataclasses.fields(s) if getattr(s, f.name) is not None]
        if len(given) != 1:
            raise ConfigError(f"space.{key} must give exactly one of grid, signed_log, choice, "
                              f"uniform, loguniform, signed_loguniform; got "
                              f"{', '.join(given) or 'none'} ({where})")
        vals = s.values()
        if vals is not None and not vals:
            raise ConfigError(f"space.{key} has no values ({where})")
        twice = _repeated(vals or list(s.choice or []))
        if twice:
            raise ConfigError(f"space.{key} gives {', '.join(map(excerpt, twice))} more than "
                              f"once ({where}); each value makes its own trials, so a repeat "
                              "runs the same trials twice: list each value once")
        (k,) = given
        if k in ("uniform", "loguniform", "signed_loguniform"):
            lo_hi = getattr(s, k)
            if len(lo_hi) != 2 or lo_hi[0] >= lo_hi[1] or (k != "uniform" and lo_hi[0] <= 0):
                raise ConfigError(f"space.{key}.{k} must be [low, high] with low < high"
                                  f"{' and low > 0' if k != 'uniform' else ''} ({where})")
        if k == "signed_log" and not (0 < s.signed_log.min <= s.signed_log.max
                                      and s.signed_log.num >= 1):
            raise ConfigError(f"space.{key}.signed_log needs 0 < min <= max and num >= 1 "
                              f"({where})")
        out[key] = s
    return out


def _check_recipe(recipe: SearchRecipe, where: str) -> None:
    """Cross-field checks of the recipe itself (the base recipe is not read yet)."""
    if not recipe.seeds:
        raise ConfigError(f"seeds is empty ({where}); give at least one seed")
    twice = _repeated(recipe.seeds)
    if twice:
        raise ConfigError(f"seeds gives {', '.join(map(str, twice))} more than once ({where}); "
                          "a repeated seed runs the same trials twice: list each seed once")
    if recipe.metric not in METRICS:
        raise ConfigError(f"unknown metric '{recipe.metric}' ({where})"
                          f"{did_you_mean(recipe.metric, METRICS)}; choose one of: "
                          f"{', '.join(METRICS)}")
    check_resources_spec(recipe.resources, where)
    if recipe.max_concurrent_trials < 1 or recipe.max_failures < 0 or recipe.num_samples < 1:
        raise ConfigError(f"max_concurrent_trials and num_samples must be >= 1 and "
                          f"max_failures >= 0 ({where})")


def _check_against_base(recipe: SearchRecipe, base: Config, path: str) -> None:
    """The recipe against its base training recipe, before Ray starts."""
    where = f"in {path}"
    # Every searched key must be a key of the training recipe, and every value must pass
    # its checks: every grid value, both ends of a sampled range, every seed.
    for key, s in recipe.space.items():
        vals = s.values() or list(getattr(s, s.kind()))
        for v in vals:
            trial_config(base, {key: v}, where=f"space.{key} in {path}")
    for seed in recipe.seeds:
        trial_config(base, {SEED_KEY: seed}, where=f"seeds in {path}")
    _check_metric_reported(recipe, base, where)
    if recipe.metric.startswith("test_") and base.train.eval_test == "at_best":
        raise ConfigError(f"metric {recipe.metric} needs the test split every epoch but the "
                          f"base recipe sets train.eval_test=at_best ({where}); rank by "
                          f"val_acc or set train.eval_test=every_epoch")
    sch = recipe.scheduler
    if sch.type == "asha":
        max_t = sch.max_t or base.train.epochs
        if not (1 <= sch.grace_period <= max_t) or sch.reduction_factor < 2:
            raise ConfigError(f"scheduler needs 1 <= grace_period <= max_t ({max_t}) and "
                              f"reduction_factor >= 2 ({where})")


def _check_metric_reported(recipe: SearchRecipe, base: Config, where: str) -> None:
    """Every trial must report the metric the search ranks by, or Tune fails once they have
    all run ("all NA values"): refuse such a search before it starts."""
    metric = recipe.metric
    val_sizes = [base.data.val_size]
    if "data.val_size" in recipe.space:
        val_sizes = recipe.space["data.val_size"].values() or val_sizes
    if metric.startswith("val_") and any(v == 0 for v in val_sizes):
        raise ConfigError(f"metric {metric} needs a validation split but data.val_size=0 "
                          f"gives none ({where}); rank by test_acc, or set data.val_size")
    if metric.endswith("_si") and not base.selectivity.eval_si:
        raise ConfigError(f"metric {metric} needs selectivity.eval_si=true, which the base "
                          f"recipe turns off ({where}); rank by an accuracy, or turn it on")


# --------------------------------------------------------------------------- its trials

def trial_config(base: Config, params: dict, where: str = "trial") -> Config:
    """The training Config of one trial: the base recipe with the trial's values set.

    Through a dict only to set the dotted keys; rebuilt with every check, so a value the
    recipe refuses is blamed on the space (``where``), the base having passed already."""
    data = base.to_dict()  # a deep copy: the base stays as it is
    for key, value in params.items():
        set_dotted(data, key, value, create=False, where=where)
    return config_from_dict(data, where=where)


def enumerate_trials(recipe: SearchRecipe) -> list[dict]:
    """The grid's trials in Tune's order; sampled keys show as their distribution."""
    keys = list(recipe.space)
    vals = [recipe.space[k].values() or [recipe.space[k].describe()] for k in keys]
    out = []
    # Every combination of the grid values with every seed (Tune may run them in any order).
    for _ in range(recipe.samples_per_point):
        for combo in itertools.product(*vals, recipe.seeds):
            out.append({**dict(zip(keys, combo[:-1])), SEED_KEY: combo[-1]})
    return out


def trial_params(config: dict, keys: list[str]) -> dict:
    """The searched values of one trial, from Tune's config of it (dotted keys)."""
    return {k: config[k] for k in keys if k in config}


def trial_dirname(params: dict, trial_id: str) -> str:
    parts = []
    for key, v in params.items():
        short = key.rsplit(".", 1)[-1]
        parts.append(f"{short}{v:g}" if isinstance(v, float) else f"{short}{v}")
    return "_".join(parts + [trial_id]).replace("/", "-")


def trial_name(config: dict, keys: list[str], trial_id: str) -> str:
    """The trial's folder name under trials/ (``alpha-1_seed0_<id>``); the console uses it
    too, so what it prints names a folder."""
    return trial_dirname(trial_params(config, keys), trial_id)
