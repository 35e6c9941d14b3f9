"""What every analysis' options are made of: ``option()``, the text parsers, ``AnalysisOptions``.

Each analysis declares its own options dataclass in its own module (``AblationOptions`` in
seltrain/analysis/ablation.py, ...), a subclass of ``AnalysisOptions``, which holds what every
analysis takes (split, layers, images, device, output, data root, seed). A field is declared
with ``option(default, help, ...)``: its command-line spelling is its name with dashes
(``max_images`` -> ``--max-images``, plus any ``aliases``), so ``seltrain analyze``
(seltrain/analysis/commands.py), ``seltrain report --analysis-args`` and library callers all
read the same declaration. Values are checked only when an options object is made
(``__post_init__``, then the class' own ``check()``): a bad one is a one-line ConfigError that
names the option. Text (``"0,1/255"``, ``"all+extra"``) is accepted wherever the command line
accepts it and parsed by the field's ``parse``.

Options of different analyses that one ``--analysis-args`` string may set together have
distinct names (orientation's ``--gosi-threshold``, dimensionality's ``--variance-share``);
each also answers to an alias (``--threshold``) wherever that is unambiguous.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, NoReturn

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


def checkpoint_choice(text: str) -> str:
    """``--checkpoint``: ``best``, ``last``, a kept epoch as ``epoch_003`` or ``3``
    (``run.keep_epochs``, 0-based as metrics.jsonl; the checkpoint's name without .pt), or
    ``kept``: every kept epoch."""
    from seltrain.checkpoint import epoch_name

    t = str(text).strip().lower()
    if t in ("best", "last", "kept"):
        return t
    digits = t[len("epoch_"):] if t.startswith("epoch_") else t
    if digits.isdigit():
        return epoch_name(int(digits))
    raise ValueError("give best, last, kept (every kept epoch), or one kept epoch "
                     "(run.keep_epochs) as epoch_003 or 3")


# The figure formats (seltrain/analysis/plots.py writes each chosen one): PNG for screens and
# TensorBoard; SVG and PDF are vector, for papers.
FORMATS = ("png", "svg", "pdf")


def parse_formats(text: str | tuple | list) -> tuple[str, ...]:
    """``"png,pdf"`` (or a sequence of names) -> ("png", "pdf"), in the order given, each
    once; an unknown or empty format is a ValueError naming it and the choices."""
    names = [str(t).strip().lower()
             for t in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"give one or more of {', '.join(FORMATS)}, comma-separated")
    for n in names:
        if n not in FORMATS:
            raise ValueError(f"unknown format '{n}'; choose from {', '.join(FORMATS)} "
                             "(comma-separated for several)")
    return tuple(dict.fromkeys(names))


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
    checkpoint: str = option(
        "best", "which checkpoint of a run folder (of every trial of an experiment): best "
        "(last.pt where there is no best.pt), last, an epoch run.keep_epochs kept (epoch_003 "
        "or 3; results go to <run>/analysis/epoch_003/<analysis>), or kept: every kept epoch "
        "(ablation then adds <run>/analysis/ablation_over_epochs)",
        parse=checkpoint_choice, metavar="best|last|kept|epoch_NNN")
    format: tuple[str, ...] = option(
        ("png",), "the figures' formats, comma-separated from png, svg, pdf (svg and pdf are "
        "vector, for papers): every figure is written in each", parse=parse_formats,
        metavar="png|svg|pdf[,...]")

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
        try:  # a library caller's sequence is checked as the command line's text is
            self.format = parse_formats(self.format)
        except ValueError as e:
            self.fail("format", ",".join(map(str, self.format)), str(e))
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
