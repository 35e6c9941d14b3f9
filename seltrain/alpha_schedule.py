"""``selectivity.alpha_schedule``: the regularizer's alpha set per epoch ("regularizing late").

Ranadive et al. 2023 ("On the special role of class-selective neurons in early training",
TMLR) train with alpha 0 for the first epochs and the regularizer on from then on (their runs
"regularized from epoch 0 onward" against "from epoch 5 onward"). Their reference code
(Omkar-Ranadive/Class-Selective-Neurons, ``trainer_reg_v2.py``, ``trainer_reg_cifar10.py``)
expands a string such as ``"0*5 -20*15"`` into one alpha per epoch, constant within an epoch
and indexed by the 0-based epoch. ``kind: step`` matches that two-level form exactly:
``initial`` (their first alpha, 0) for epochs ``0 .. start_epoch - 1``, then
``selectivity.alpha`` (their second, -20) from ``start_epoch`` (their 5) on. ``kind: ramp`` is
seltrain's own, not the paper's: alpha moves linearly from ``initial`` at ``start_epoch`` to
``selectivity.alpha`` at ``end_epoch`` and stays there. ``kind: window`` is the paper's
"regularized in early epochs only" (their string ``"-20*5 0*15"``, a window from epoch 0) and,
more generally, a three-piece ``"0*a -20*b 0*c"``: ``selectivity.alpha`` for epochs
``start_epoch .. end_epoch - 1`` and ``initial`` outside them.

Deviations from the reference code, each deliberate:
- Only two levels (or one ramp between them); the reference string allows any number of
  pieces. ``selectivity.alpha`` stays the alpha a run is regularized at, so a search sweeps
  it, the run name and ``seltrain report`` group runs by it, and a search varies the schedule
  through its scalar keys (``selectivity.alpha_schedule.start_epoch: {grid: [0, 5, 30]}``).
- The alpha of an epoch is a function of the epoch number alone, so a resumed run continues
  the schedule where it stopped (the reference indexes its list by the epochs run since the
  restart, which restarts the schedule on a resume).

The schedule is a typed section of the recipe (``seltrain.config.SelectivityConfig``); its
checks are ``check`` (one line, exit 2) and its ranges ``RANGES``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from seltrain.errors import ConfigError

KINDS = ("constant", "step", "ramp", "window")


@dataclass
class AlphaScheduleConfig:
    """constant: ``selectivity.alpha`` every epoch. step: ``initial`` before ``start_epoch``,
    ``selectivity.alpha`` from it on (Ranadive et al. 2023). ramp: ``initial`` up to
    ``start_epoch``, linear to ``selectivity.alpha`` at ``end_epoch``, then constant. window:
    ``selectivity.alpha`` for epochs ``start_epoch .. end_epoch - 1``, ``initial`` before and
    after (early only: ``start_epoch`` 0). Epochs count from 0, as metrics.jsonl does."""
    kind: str = field(default="constant", metadata={"choices": KINDS})
    start_epoch: int = 0
    end_epoch: int = 0
    initial: float = 0.0


RANGES = {
    "selectivity.alpha_schedule.start_epoch": (">= 0", lambda v: v >= 0),
    "selectivity.alpha_schedule.end_epoch": (">= 0", lambda v: v >= 0),
    "selectivity.alpha_schedule.initial": ("a finite number", lambda v: True),
}


def alpha_at(schedule: AlphaScheduleConfig, alpha: float, epoch: int) -> float:
    """The alpha of 0-based ``epoch`` (constant within the epoch)."""
    s = schedule
    if s.kind == "window":
        return float(alpha if s.start_epoch <= epoch < s.end_epoch else s.initial)
    if s.kind == "constant" or epoch >= (s.end_epoch if s.kind == "ramp" else s.start_epoch):
        return float(alpha)
    if s.kind == "step" or epoch <= s.start_epoch:
        return float(s.initial)
    frac = (epoch - s.start_epoch) / (s.end_epoch - s.start_epoch)
    return float(s.initial + (alpha - s.initial) * frac)


def is_scheduled(schedule: AlphaScheduleConfig) -> bool:
    return schedule.kind != "constant"


def describe(schedule: AlphaScheduleConfig, alpha: float) -> str:
    """One line for logs and summaries: ``constant -10``, ``0 until epoch 30, then -10``."""
    s = schedule
    if s.kind == "constant":
        return f"constant {alpha:g}"
    if s.kind == "step":
        return f"{s.initial:g} until epoch {s.start_epoch}, then {alpha:g}"
    if s.kind == "window":
        return (f"{alpha:g} in epochs {s.start_epoch}-{s.end_epoch - 1}, "
                f"{s.initial:g} outside")
    return f"{s.initial:g} until epoch {s.start_epoch}, linear to {alpha:g} at epoch {s.end_epoch}"


def name_suffix(schedule: AlphaScheduleConfig) -> str:
    """What ``run.name: auto`` adds, so that scheduled and constant runs get their own
    folders: ``_from30`` (step), ``_ramp30-40`` (ramp), ``_win0-5`` (window, its end
    excluded as in ``range``), nothing for constant."""
    s = schedule
    init = "" if s.initial == 0 else f"i{s.initial:g}"
    if s.kind == "step":
        return f"_from{s.start_epoch}{init}"
    if s.kind == "ramp":
        return f"_ramp{s.start_epoch}-{s.end_epoch}{init}"
    if s.kind == "window":
        return f"_win{s.start_epoch}-{s.end_epoch}{init}"
    return ""


def check(schedule: AlphaScheduleConfig, epochs: int) -> None:
    """The cross-field checks: epochs in order and inside the run, no ignored keys."""
    s, key = schedule, "selectivity.alpha_schedule"
    if s.kind == "constant":
        if (s.start_epoch, s.end_epoch, s.initial) != (0, 0, 0.0):
            raise ConfigError(f"{key}.kind is constant, which ignores start_epoch, end_epoch "
                              f"and initial; set {key}.kind=step or ramp to use them")
        return
    if s.kind == "step" and s.end_epoch != 0:
        raise ConfigError(f"{key}.kind is step, which ignores end_epoch "
                          f"({s.end_epoch}); set {key}.kind=ramp or leave end_epoch out")
    if s.kind in ("ramp", "window") and s.end_epoch <= s.start_epoch:
        raise ConfigError(f"{key}: epochs out of order, start_epoch {s.start_epoch} is not "
                          f"before end_epoch {s.end_epoch}; give start_epoch < end_epoch")
    if s.kind == "window":
        # end_epoch is the first epoch back at ``initial``: train.epochs itself is allowed
        # (regularized up to the run's end), anything past it never happens.
        if s.end_epoch > epochs:
            raise ConfigError(f"{key}.end_epoch={s.end_epoch} is past the run's end "
                              f"(train.epochs={epochs}; the window holds epochs start_epoch "
                              f"to end_epoch - 1); give an end_epoch of at most {epochs}")
        return
    last = s.end_epoch if s.kind == "ramp" else s.start_epoch
    if last >= epochs:
        which = "end_epoch" if s.kind == "ramp" else "start_epoch"
        raise ConfigError(f"{key}.{which}={last} is past the run's last epoch ({epochs - 1}; "
                          f"epochs count from 0), so the schedule never reaches "
                          f"selectivity.alpha; give a {which} below train.epochs={epochs}")
