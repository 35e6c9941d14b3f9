"""The analyses in a run's TensorBoard: their headline numbers as scalars, and the layout that
every run opens on.

- ``write_headline``: when an analysis of a seltrain run folder ends (``commands.
  analyse_target``, which the single process and a fan-out's Ray task both go through), its
  ``SWEEP_HEADLINE`` numbers go into the run's ``tb/`` as ``analysis/<analysis>/<key>``, in
  an event file of their own, so the training events are never rewritten.
- ``headline_tags``: those tags for every registered analysis. The trainer declares them as
  metrics of the run's HParams entry from its start: TensorBoard's HParams table shows only the
  metric columns a run declared, so a sweep's table gets robustness (or gOSI, ...) against
  alpha once the analyses are written.
- ``run_layout``: the custom-scalars layout the trainer writes at a run's start: selectivity
  and accuracy first (what seltrain is for), then the analyses' headlines, throughput last.
"""
from __future__ import annotations

import math
import os
import re

# The prefix of every analysis headline scalar in a run's TensorBoard.
PREFIX = "analysis"
# Marks the analyses' event files among the run's (torch puts it at the end of the name).
SUFFIX = ".seltrain-analysis"


def headline_tag(name: str, key: str) -> str:
    return f"{PREFIX}/{name}/{key}"


def headline_tags(names=None) -> list[str]:
    """``analysis/<name>/<key>`` for each ``SWEEP_HEADLINE`` key of the analyses ``names``
    (default: every registered one), in the registry's order."""
    from seltrain.analysis.registry import ANALYSES

    return [headline_tag(n, k) for n, module in ANALYSES.items()
            if names is None or n in names for k in module.SWEEP_HEADLINE]


def _number(value) -> float | None:
    """``value`` as a finite float, else None: a headline the analysis did not measure (no
    FGSM asked for: ``mean_fgsm_accuracy`` None) or could not (NaN) gets no point."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def tb_folder(target) -> str | None:
    """The TensorBoard folder of ``target``'s run, or None: a network seltrain did not train
    (a target folder: ``target.spec``), or a run trained with ``run.tensorboard=false``."""
    if target.spec is not None or not target.run_dir:
        return None
    folder = os.path.join(target.run_dir, "tb")
    return folder if os.path.isdir(folder) else None


def write_headline(target, name: str, headline: dict) -> str | None:
    """Write ``headline`` ({key: number}, an analysis' ``SWEEP_HEADLINE`` values) as scalars
    ``analysis/<name>/<key>`` into ``target``'s run's ``tb/``; returns that folder, or None
    when the target has none (``tb_folder``) or no headline number is finite.

    A new ``SummaryWriter`` with its own ``filename_suffix`` makes a new event file: the
    training run's files are never opened for writing, so a run still training, and
    ``--resume``'s ``purge_step``, never meet these events. Rerunning the analysis adds
    another file, named by its later creation time; TensorBoard reads a folder's event files
    in name order, so the newest numbers are the last points of each tag, which are what the
    scalar's latest value and the HParams table show.

    Step: the epoch of the analysed checkpoint (``ckpt["epoch"]``, already loaded, so free):
    best.pt's is the run's best epoch, so a headline lines up with that epoch's ``test/acc``
    and ``test/si_mean`` (epochs are the step of every per-epoch scalar). A checkpoint without
    one (an older format) gets 0."""
    folder = tb_folder(target)
    values = {k: _number(v) for k, v in headline.items()}
    values = {k: v for k, v in values.items() if v is not None}
    if folder is None or not values:
        return None
    from torch.utils.tensorboard import SummaryWriter

    step = int((target.ckpt or {}).get("epoch", 0) or 0)
    from seltrain.metrics import wait_to_sort_last

    wait_to_sort_last(folder)  # TensorBoard takes the last file's point: this one's
    writer = SummaryWriter(folder, filename_suffix=f"{SUFFIX}.{name}")
    try:
        for key, v in values.items():
            writer.add_scalar(headline_tag(name, key), v, step)
    finally:
        writer.close()
    return folder


def run_layout(*, has_val: bool, eval_si: bool, hook_tags=()) -> dict:
    """The custom-scalars layout (``SummaryWriter.add_custom_scalars``) of a training run:
    {category: {chart: ["Multiline", [tag regexes]]}}, in the order TensorBoard shows them.

    Only tags the run writes: val only with a validation split, SI only with
    ``selectivity.eval_si``; ``hook_tags`` the epoch hooks' prefixes (``orientation``). The
    analyses' charts fill once an analysis of the run writes its headline (``write_headline``).
    Charts name tags by regex (``^test/si/``, not each layer), so the trials of a sweep, even
    of different networks, write identical charts, which TensorBoard (merging every run's
    layout per category, identical charts once) shows once in the sweep's logdir."""
    splits = ("val", "test") if has_val else ("test",)
    first: dict = {}
    if eval_si:
        first["mean SI"] = ["Multiline", [f"^{s}/si_mean$" for s in splits]]
        for s in splits:
            first[f"SI per layer ({s})"] = ["Multiline", [f"^{s}/si/"]]
    first["accuracy"] = ["Multiline", [f"^{s}/acc$" for s in splits]]
    for tag in hook_tags:
        first[tag] = ["Multiline", [f"^{re.escape(tag)}/"]]
    from seltrain.analysis.registry import ANALYSES

    analyses = {name: ["Multiline", [f"^{re.escape(t)}$" for t in headline_tags([name])]]
                for name, module in ANALYSES.items() if module.SWEEP_HEADLINE}
    throughput = {"images/s (steps)": ["Multiline", ["^train/images_per_s$"]],
                  "images/s (epochs)": ["Multiline", ["^epoch/images_per_s$"]]}
    return {"selectivity & accuracy": first, "analyses": analyses, "throughput": throughput}
