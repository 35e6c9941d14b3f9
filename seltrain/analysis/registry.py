"""The analyses by name: the one table that ``seltrain analyze NAME``, ``seltrain report
--analyses`` and library callers look an analysis up in.

Each analysis is one module, which holds everything of it:

- ``Options``: its options dataclass, an ``AnalysisOptions`` (seltrain/analysis/options.py);
  its docstring is the subcommand's one-line help;
- ``compute(target, options) -> dict``: the numbers, with a ``summary`` of the headline ones;
- ``write(result, target, options, out) -> list[str]``: its JSON, CSV and PNG files in the
  folder ``out``, and the lines the command prints;
- ``SWEEP_HEADLINE``: the summary keys that ``seltrain report --analyses`` plots against
  alpha, and ``sweep_panels(summaries)`` where it draws per-layer sweep figures.

``seltrain analyze selectivity`` is the module ``unit_selectivity``: ``seltrain.selectivity``
is the regulariser's SI.
"""
from __future__ import annotations

from types import ModuleType

from seltrain.analysis import (ablation, dimensionality, gradients, orientation, robustness,
                               pwcca, rotation, unit_selectivity)
from seltrain.errors import ConfigError, did_you_mean

# In the order the command line lists them.
ANALYSES: dict[str, ModuleType] = {
    "selectivity": unit_selectivity, "ablation": ablation, "orientation": orientation,
    "robustness": robustness, "dimensionality": dimensionality, "gradients": gradients,
    "rotation": rotation, "pwcca": pwcca}
NAMES = tuple(ANALYSES)


def analysis(name: str) -> ModuleType:
    """The module of analysis ``name``; an unknown name is a one-line ConfigError."""
    if name not in ANALYSES:
        raise ConfigError(f"unknown analysis '{name}'{did_you_mean(name, NAMES)}; choose "
                          f"from {', '.join(NAMES)}")
    return ANALYSES[name]
