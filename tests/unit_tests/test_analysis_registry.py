"""The analyses by name (seltrain/analysis/registry.py): each name maps to the one module
holding its Options, compute, write and sweep headline, `seltrain analyze` offers exactly
those names, and an unknown name or another analysis' options are refused."""
from __future__ import annotations

import pytest

from seltrain.analysis.gradients import GradientsOptions
from seltrain.errors import ConfigError


def test_every_registered_analysis_is_one_module_holding_all_of_it():
    """Each name maps to the module that holds its Options, compute, write and sweep headline,
    and `seltrain analyze` offers exactly those names, in the registry's order."""
    import inspect

    from seltrain.analysis.options import AnalysisOptions
    from seltrain.analysis.registry import ANALYSES
    from seltrain.cli import build_parser

    assert list(ANALYSES) == ["selectivity", "ablation", "orientation", "robustness",
                              "dimensionality", "gradients", "rotation", "pwcca"]
    for name, module in ANALYSES.items():
        assert module.__name__.startswith("seltrain.analysis.")
        cls = module.Options
        assert issubclass(cls, AnalysisOptions) and cls.__module__ == module.__name__, name
        assert cls.__doc__.strip(), name  # the subcommand's help line
        assert list(inspect.signature(module.compute).parameters) == ["target", "opts"]
        assert list(inspect.signature(module.write).parameters) == ["r", "target", "opts", "out"]
        assert module.SWEEP_HEADLINE and all(isinstance(k, str) for k in module.SWEEP_HEADLINE)
        assert callable(getattr(module, "sweep_panels", len)), name
    # the command `selectivity` is the module named unit_selectivity
    assert ANALYSES["selectivity"].__name__ == "seltrain.analysis.unit_selectivity"
    analyze = build_parser()._subparsers._group_actions[0].choices["analyze"]
    # every analysis is a subcommand, and `layers` (what a network offers to probe) beside them
    assert list(analyze._subparsers._group_actions[0].choices) == [*ANALYSES, "layers"]


def test_an_unknown_analysis_or_foreign_options_are_refused():
    from seltrain.analysis.commands import run_analysis
    from seltrain.analysis.registry import analysis

    with pytest.raises(ConfigError, match=r"^unknown analysis 'ablaton' \(did you mean "
                                          r"'ablation'\?\); choose from selectivity, "):
        analysis("ablaton")
    with pytest.raises(TypeError, match="ablation takes AblationOptions, not GradientsOptions"):
        run_analysis("ablation", "/nonexistent", GradientsOptions())
