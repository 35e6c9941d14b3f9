"""Every analysis' options: one typed dataclass per analysis, declared once.

``AnalysisOptions`` holds what every analysis takes (split, layers, images, device, output,
data root, seed); ``SelectivityOptions`` ... ``GradientsOptions`` add their own. A field is
declared with ``option(default, help, ...)``: its command-line spelling is its name with
dashes (``max_images`` -> ``--max-images``, plus any ``aliases``), so ``seltrain analyze``
(seltrain/analysis/commands.py), ``seltrain report --analysis-args`` and library callers all
read the same declaration. Values are checked here and only here, when an options object is
made (``__post_init__``): a bad one is a one-line ConfigError that names the option. Text
(``"0,1/255"``, ``"all+extra"``) is accepted wherever the command line accepts it and parsed
by the field's ``parse``.

The gOSI cut of ``analyze orientation`` and the variance share of ``analyze dimensionality``
have names of their own, ``--gosi-threshold`` and ``--variance-share``, so one
``--analysis-args`` string can set both. Each also answers to ``--threshold`` wherever that is
unambiguous (either command alone, or a sweep that runs only one of the two).
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, NoReturn

from seltrain.analysis.corruption_tables import COMMON, EXTRA
from seltrain.config import shown
from seltrain.errors import ConfigError


def option(default, help: str, *, parse: Callable[[str], Any] | None = None,
           choices: tuple | None = None, aliases: tuple[str, ...] = (), nargs: str | None = None,
           metavar: str | None = None, shown: str | None = None):
    """A dataclass field that is also a command-line option. ``parse`` turns the option's
    text into the field's value (raising ValueError with the reason); ``shown`` is the
    default as the help prints it (default: the value itself)."""
    return field(default=default, metadata={
        "help": help, "parse": parse, "choices": choices, "aliases": tuple(aliases),
        "nargs": nargs, "metavar": metavar, "shown": shown})


def max_images_option(default: int):
    """``--max-images N``: every analysis has it, with its own default."""
    return option(default, "use the first N images of the split (0: all)", parse=count,
                  metavar="N", shown="all" if default == 0 else None)


def flag(name: str) -> str:
    """The command-line spelling of field ``name``."""
    return "--" + name.replace("_", "-")


def option_label(cls, name: str) -> str:
    """The option as errors name it: ``--variance-share/--threshold``, as argparse does."""
    f = next(f for f in fields(cls) if f.name == name)
    return "/".join([flag(name), *f.metadata.get("aliases", ())])


# --------------------------------------------------------------------------- text -> values

def count(text: str) -> int:
    """A count >= 0 (0: all); a negative count is refused rather than read as "all"."""
    try:
        n = int(text)
    except ValueError:
        raise ValueError("give a whole number >= 0 (0: all)") from None
    if n < 0:
        raise ValueError("give a whole number >= 0 (0: all)")
    return n


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("give a whole number") from None


def number(text: str) -> float:
    """A finite number, or a fraction such as 8/255 (nan, inf and 1e400 are refused: no
    option takes them)."""
    num, _, den = text.strip().partition("/")
    try:
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise ValueError("give a number such as 0.03 or 8/255") from None
    if not math.isfinite(value):
        raise ValueError("give a finite number such as 0.03 or 8/255")
    return value


def numbers(text: str) -> tuple[float, ...]:
    """Comma-separated finite numbers or fractions: ``0,0.001,8/255``."""
    try:
        return tuple(number(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError("give comma-separated finite numbers such as 0.001,0.002 or "
                         "8/255") from None


def words(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def corruption_names(spec: str) -> list[str]:
    """``--corruptions``: ``all`` (the 15 common), ``extra`` (CIFAR-10-C's 4 held-out: speckle
    noise, Gaussian blur, spatter, saturate), ``all+extra`` (19), or comma-separated names;
    groups and names can be mixed (``extra,fog``), duplicates dropped."""
    groups = {"all": list(COMMON), "extra": list(EXTRA), "all+extra": [*COMMON, *EXTRA]}
    names = [n for part in words(spec) for n in groups.get(part, [part])]
    known = [*COMMON, *EXTRA]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ConfigError(f"--corruptions: unknown {', '.join(bad) or repr(spec)}; choose all, "
                          f"extra, all+extra or from {', '.join(known)}")
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- the options

@dataclass
class AnalysisOptions:
    """What every analysis takes."""

    split: str = option("test", "the data split, carved as in training", choices=("val", "test"))
    layers: tuple[str, ...] = option(
        (), "probe names, groups (all, blocks) or module paths", parse=words, nargs="+",
        metavar="LAYER", shown="the layers probed in training")
    max_images: int = max_images_option(0)
    device: str = option("auto", "auto (cuda if available), cpu, cuda or cuda:N")
    out: str | None = option(None, "output folder, written as one unit (replaced whole)",
                             metavar="DIR", shown="<run>/analysis/<analysis>")
    force: bool = option(False, "replace an --out that holds other files (another run's "
                         "results): the folder is replaced whole")
    data_root: str | None = option(None, "read the dataset from here instead of the recipe's "
                                   "data.root", metavar="DIR")
    seed: int = option(0, "seed for corruptions, PGD, random orders and subsets",
                       parse=whole_number)

    def __post_init__(self):
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if isinstance(value, str) and meta.get("parse"):
                try:
                    value = meta["parse"](value)
                except ValueError as e:
                    self.fail(f.name, value, str(e))
            if isinstance(value, list):
                value = tuple(value)
            setattr(self, f.name, value)
            if meta.get("choices") and value not in meta["choices"]:
                self.fail(f.name, value, "choose from " + ", ".join(map(str, meta["choices"])))
        self.check()

    def fail(self, name: str, value, why: str) -> NoReturn:
        raise ConfigError(f"{option_label(type(self), name)} {shown(str(value))}: {why}")

    def at_least(self, name: str, low, *, optional: bool = False) -> None:
        value = getattr(self, name)
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            self.fail(name, value, f"give a number >= {low}")

    def check(self) -> None:
        """The checks of this analysis' own options (the base checks the shared ones)."""
        import torch

        self.at_least("max_images", 0)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                self.fail("device", self.device, "use auto, cpu, cuda or cuda:N")


@dataclass
class SelectivityOptions(AnalysisOptions):
    """exact SI per unit and layer, preferred classes"""


@dataclass
class AblationOptions(AnalysisOptions):
    """single-unit (and cumulative) ablation, correlations of the drops with SI, L1 norm and
    mean activation"""

    cumulative: bool = option(False, "also cumulative ablation curves (SI high/low first, "
                              "random)")
    n_random: int = option(5, "random orders for --cumulative", parse=whole_number,
                           metavar="N")
    l1_weights: str = option("bn_folded", "incoming-weight L1: of the BatchNorm-folded "
                             "effective weight (BN cancels the raw conv scale) or of the raw "
                             "weight", choices=("bn_folded", "raw"))
    unit_batch: int = option(0, "ablations per pass of the network after the layer (0: auto, "
                             "sized from free memory on CUDA, 1 on the CPU); the results do "
                             "not depend on it", parse=whole_number, metavar="N", shown="0")

    def check(self) -> None:
        super().check()
        self.at_least("n_random", 0)
        self.at_least("unit_batch", 0)


@dataclass
class OrientationOptions(AnalysisOptions):
    """OSI/gOSI on gratings, top/bottom-gOSI ablation, shift invariance"""

    max_images: int = max_images_option(1000)
    gosi_threshold: float = option(0.33, "gOSI above this counts as orientation selective "
                                   "(Ukita: 0.33)", parse=number, aliases=("--threshold",),
                                   metavar="GOSI")
    shift: int = option(2, "pixels for shift invariance", parse=whole_number)
    no_ablation: bool = option(False, "gratings only: skip the gOSI-split ablation and shift "
                               "invariance")
    permutations: int = option(1, "shuffles of the gratings for the null OSI/gOSI "
                               "distribution (Ukita: 1, drawn with --seed 0)",
                               parse=whole_number)
    percentile: float = option(50.0, "ablate units strictly above the (100 - P)th and strictly "
                               "below the Pth gOSI percentile (Ukita: 50, the median)",
                               parse=number)

    def check(self) -> None:
        super().check()
        if not 0 <= self.gosi_threshold < 1:  # gOSI lies in [0, 1]
            self.fail("gosi_threshold", f"{self.gosi_threshold:g}", "give a gOSI in [0, 1) "
                      "(Ukita: 0.33)")
        if self.shift < 1:
            self.fail("shift", self.shift, "give a shift of at least 1 pixel")
        if self.permutations < 1:
            self.fail("permutations", self.permutations, "need at least 1 shuffle of the "
                      "gratings for the null distribution")
        if not 0 < self.percentile <= 50:
            self.fail("percentile", f"{self.percentile:g}", "use a value in (0, 50] (Ukita: "
                      "50, the median)")


def _check_corruptions(opts) -> None:
    # normalised through the same parser as the command line: groups expanded, names checked
    opts.corruptions = tuple(corruption_names(",".join(opts.corruptions)))


def _check_eps(opts, eps) -> None:
    """L-inf epsilons are in pixel units of images in [0, 1]: 0 (clean) up to 1."""
    bad = [e for e in eps if not 0 <= e <= 1]
    if bad:
        opts.fail("eps", ",".join(f"{e:g}" for e in eps), "give epsilons from 0 to 1 in pixel "
                  "units, e.g. 0,1/255,8/255")


def _check_attack(opts) -> None:
    opts.at_least("steps", 1)
    if opts.step_size is not None and not opts.step_size > 0:
        opts.fail("step_size", opts.step_size, "give a step > 0, or leave it out for "
                  "2.5 * eps / steps")


TABLES = ("auto", "cifar", "tiny", "imagenet")


@dataclass
class RobustnessOptions(AnalysisOptions):
    """accuracy under common corruptions and attacks"""

    max_images: int = max_images_option(1000)
    corruptions: tuple[str, ...] = option(
        tuple(COMMON), "all (the 15 common), extra (speckle_noise, gaussian_blur, spatter, "
        "saturate), all+extra, or comma-separated names", parse=corruption_names,
        metavar="NAMES", shown="all")
    severities: tuple[int, ...] = option((1, 2, 3, 4, 5), "comma-separated severities 1-5",
                                         parse=numbers, shown="1,2,3,4,5")
    corruption_table: str = option(
        "auto", "parameters of which released set to corrupt with on the fly (auto: by "
        "dataset; cifar for cifar10/100, fashion_mnist, synthetic; tiny for tinyimagenet; "
        "imagenet for imagefolder)", choices=TABLES)
    corrupted_root: str | None = option(
        None, "evaluate on the released files instead: CIFAR-10-C/-100-C (<corruption>.npy + "
        "labels.npy) or Tiny-ImageNet-C/ImageNet-C (<corruption>/<severity>/<wnid>/*.JPEG)",
        metavar="DIR")
    raw_corruptions: bool = option(False, "on the fly: feed the corrupted floats, without the "
                                   "released files' 8-bit (and JPEG q85) storage")
    eps: tuple[float, ...] = option((0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.031),
                                    "L-inf epsilons in pixel units (0-1), e.g. 0,1/255,8/255",
                                    parse=numbers, shown="0,0.001,0.002,0.004,0.008,0.016,0.031")
    attack: tuple[str, ...] = option(("fgsm", "pgd"), "fgsm, pgd or fgsm,pgd", parse=words,
                                     shown="fgsm,pgd")
    steps: int = option(10, "PGD steps", parse=whole_number)
    step_size: float | None = option(None, "PGD step size", parse=number,
                                     shown="2.5 * eps / steps")

    def check(self) -> None:
        super().check()
        _check_corruptions(self)
        if not self.severities or any(s not in (1, 2, 3, 4, 5) for s in self.severities):
            self.fail("severities", ",".join(f"{s:g}" for s in self.severities),
                      "use numbers from 1 to 5")
        self.severities = tuple(int(s) for s in self.severities)
        if not self.eps:
            self.fail("eps", "''", "give at least one epsilon, e.g. 0")
        _check_eps(self, self.eps)
        if not self.attack or any(a not in ("fgsm", "pgd") for a in self.attack):
            self.fail("attack", ",".join(self.attack), "use fgsm, pgd or fgsm,pgd")
        _check_attack(self)


def _single_eps(text: str) -> float:
    eps = numbers(text)
    if len(eps) != 1:
        raise ValueError("dimensionality takes one --eps, e.g. --eps 8/255")
    return eps[0]


@dataclass
class DimensionalityOptions(AnalysisOptions):
    """principal components for a share of the variance of the representation of clean,
    corrupted and adversarial inputs, and of the perturbation-induced change"""

    max_images: int = max_images_option(1000)
    variance_share: float = option(0.95, "share of the variance to explain (the paper's value "
                                   "is unconfirmed)", parse=number, aliases=("--threshold",),
                                   metavar="SHARE")
    spatial: str = option("flatten", "flatten: whole layer output; mean: spatial mean per unit",
                          choices=("flatten", "mean"))
    corruptions: tuple[str, ...] = option(
        tuple(COMMON), "all, extra, all+extra, or comma-separated names",
        parse=corruption_names, metavar="NAMES", shown="all")
    severity: int = option(3, "corruption severity", parse=whole_number,
                           choices=(1, 2, 3, 4, 5))
    corruption_table: str = option("auto", "corruption parameters of which released set "
                                   "(auto: by dataset, as analyze robustness)", choices=TABLES)
    raw_corruptions: bool = option(False, "feed the corrupted floats, without the released "
                                   "files' 8-bit (and JPEG q85) storage")
    eps: float = option(0.031, "one L-inf epsilon (pixel units), e.g. 8/255", parse=_single_eps)
    attack: str = option("pgd", "the attack", choices=("fgsm", "pgd"))
    steps: int = option(10, "PGD steps", parse=whole_number)
    step_size: float | None = option(None, "PGD step size", parse=number,
                                     shown="2.5 * eps / steps")
    early_layers: int | None = option(None, "how many of the first layers count as early in the "
                                      "summary", parse=whole_number, metavar="N",
                                      shown="the first third, rounded up")

    def check(self) -> None:
        super().check()
        if not 0 < self.variance_share <= 1:
            self.fail("variance_share", f"{self.variance_share:g}", "give a share in (0, 1], "
                      "e.g. 0.95")
        _check_corruptions(self)
        _check_eps(self, (self.eps,))
        self.at_least("early_layers", 1, optional=True)
        _check_attack(self)


@dataclass
class GradientsOptions(AnalysisOptions):
    """variability of each unit's input gradient across images and across units"""

    max_images: int = max_images_option(256)
    batch_size: int = option(64, "images per forward pass", parse=whole_number, metavar="N")
    unit_block: int = option(16, "units per vmapped backward pass; memory grows with "
                             "batch-size x unit-block", parse=whole_number, metavar="N")
    max_units: int | None = option(None, "a random subset (--seed) of at most this many units "
                                   "per layer", parse=whole_number, metavar="N",
                                   shown="every unit")
    wrt: str = option("pixels", "gradients with respect to pixel values or to the normalised "
                      "network input", choices=("pixels", "input"))

    def check(self) -> None:
        super().check()
        for name in ("batch_size", "unit_block"):
            self.at_least(name, 1)
        self.at_least("max_units", 1, optional=True)


# The options of each `seltrain analyze` subcommand, in the order the CLI lists them.
OPTIONS: dict[str, type[AnalysisOptions]] = {
    "selectivity": SelectivityOptions, "ablation": AblationOptions,
    "orientation": OrientationOptions, "robustness": RobustnessOptions,
    "dimensionality": DimensionalityOptions, "gradients": GradientsOptions}
ANALYSES = tuple(OPTIONS)


def flags(cls: type[AnalysisOptions]) -> dict[str, str]:
    """{every command-line spelling of ``cls``' options: field name}."""
    return {spelling: f.name for f in fields(cls)
            for spelling in (flag(f.name), *f.metadata.get("aliases", ()))}


def default_shown(f) -> str | None:
    """A field's default as the help prints it, or None where there is none to print."""
    if f.metadata.get("shown"):
        return f.metadata["shown"]
    if f.default is MISSING or f.default is None or f.default is False:
        return None
    if isinstance(f.default, tuple):
        return ",".join(map(str, f.default))
    return str(f.default)
