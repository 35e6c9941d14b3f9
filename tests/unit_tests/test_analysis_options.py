"""The analyses' typed options (each analysis' own, on seltrain/analysis/options.py's
``AnalysisOptions``), the registry that names them, and the strict reading of
`seltrain report --analysis-args` into them (commands.sweep_options)."""
from __future__ import annotations

import pytest

from seltrain.analysis.commands import sweep_options
from seltrain.analysis.ablation import AblationOptions
from seltrain.analysis.dimensionality import DimensionalityOptions
from seltrain.analysis.gradients import GradientsOptions
from seltrain.analysis.orientation import OrientationOptions
from seltrain.analysis.robustness import RobustnessOptions
from seltrain.analysis.unit_selectivity import SelectivityOptions
from seltrain.errors import ConfigError


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_defaults_and_text_are_parsed_into_typed_values():
    r = RobustnessOptions()
    assert (r.max_images, r.severities, r.attack) == (1000, (1, 2, 3, 4, 5), ("fgsm", "pgd"))
    assert len(r.corruptions) == 15 and r.eps[-1] == 0.031
    r = RobustnessOptions(corruptions="extra,fog", eps="0,8/255", severities="1,5",
                          attack="fgsm", max_images="64")
    assert r.corruptions == ("speckle_noise", "gaussian_blur", "spatter", "saturate", "fog")
    assert r.eps == (0.0, 8 / 255) and r.severities == (1, 5) and r.attack == ("fgsm",)
    assert r.max_images == 64
    d = DimensionalityOptions(eps="8/255", variance_share="0.9", severity="2")
    assert (d.eps, d.variance_share, d.severity) == (8 / 255, 0.9, 2)
    assert SelectivityOptions().max_images == 0 and GradientsOptions().max_images == 256
    assert AblationOptions(layers=["layer1.0"]).layers == ("layer1.0",)


@pytest.mark.parametrize("make,names", [
    (lambda: DimensionalityOptions(variance_share=1.5), ("--variance-share/--threshold", "1.5")),
    (lambda: OrientationOptions(percentile=70), ("--percentile", "(0, 50]")),
    (lambda: OrientationOptions(permutations=0), ("--permutations", "at least 1")),
    (lambda: GradientsOptions(unit_block=0), ("--unit-block", ">= 1")),
    (lambda: RobustnessOptions(severities="1,6"), ("--severities", "1 to 5")),
    (lambda: RobustnessOptions(attack="cw"), ("--attack", "fgsm")),
    (lambda: RobustnessOptions(eps="0,x"), ("--eps", "comma-separated")),
    (lambda: DimensionalityOptions(eps="0,8/255"), ("--eps", "takes one --eps")),
    (lambda: SelectivityOptions(split="train"), ("--split", "val, test")),
    (lambda: SelectivityOptions(max_images=-3), ("--max-images", ">= 0")),
    (lambda: SelectivityOptions(device="gpu"), ("--device", "cuda:N")),
    (lambda: AblationOptions(l1_weights="l2"), ("--l1-weights", "bn_folded, raw")),
    (lambda: RobustnessOptions(corruptions="fog,blur"), ("--corruptions", "unknown blur")),
])
def test_a_bad_value_is_one_line_naming_the_option(make, names):
    with pytest.raises(ConfigError) as e:
        make()
    text = _one_line(e)
    for name in names:
        assert name in text, text


def test_sweep_gives_each_analysis_the_options_it_has():
    argv = ["--max-images", "64", "--corruptions", "gaussian_noise", "--severities", "5",
            "--eps", "0,0.03", "--attack", "fgsm", "--layers", "layer1.0", "layer3.2"]
    got = sweep_options(["selectivity", "robustness"], argv)
    sel, rob = got["selectivity"], got["robustness"]
    assert isinstance(sel, SelectivityOptions) and isinstance(rob, RobustnessOptions)
    assert (sel.max_images, sel.layers) == (64, ("layer1.0", "layer3.2"))
    assert (rob.max_images, rob.corruptions, rob.severities) == (64, ("gaussian_noise",), (5,))
    assert (rob.eps, rob.attack, rob.layers) == ((0.0, 0.03), ("fgsm",), ("layer1.0", "layer3.2"))
    # --eps is taken by both robustness (a list) and dimensionality (one value)
    got = sweep_options(["robustness", "dimensionality"], ["--eps=8/255", "--steps", "1"])
    assert got["robustness"].eps == (8 / 255,) and got["dimensionality"].eps == 8 / 255
    assert got["robustness"].steps == got["dimensionality"].steps == 1
    assert sweep_options(["gradients"], []) == {"gradients": GradientsOptions()}


def test_the_old_threshold_spelling_where_it_is_unambiguous():
    assert sweep_options(["dimensionality"], ["--threshold", "0.9"])[
        "dimensionality"].variance_share == 0.9
    assert sweep_options(["orientation", "selectivity"], ["--threshold", "0.5"])[
        "orientation"].gosi_threshold == 0.5
    got = sweep_options(["orientation", "dimensionality"],
                        ["--gosi-threshold", "0.4", "--variance-share", "0.8"])
    assert (got["orientation"].gosi_threshold, got["dimensionality"].variance_share) == (0.4, 0.8)
    with pytest.raises(ConfigError) as e:
        sweep_options(["orientation", "dimensionality"], ["--threshold", "0.9"])
    text = _one_line(e)
    assert "--threshold is ambiguous" in text and "--gosi-threshold or --variance-share" in text


@pytest.mark.parametrize("names,argv,message", [
    (["selectivity", "robustness"], ["--max-imgaes", "64"],
     "no chosen analysis (selectivity, robustness) takes --max-imgaes (did you mean "
     "'--max-images'?)"),
    (["selectivity"], ["--corruptions", "fog"], "no chosen analysis (selectivity) takes "
     "--corruptions"),
    (["robustness"], ["--max-images", "-1"], "--analysis-args (robustness): --max-images -1"),
    (["dimensionality"], ["--threshold", "1.5"], "--variance-share/--threshold 1.5"),
    (["selectivity"], ["64"], "'64' is not an option"),
    (["selectivity"], ["--out", "x"], "--out does not apply to a sweep"),
    (["ablation"], ["--cumulative", "yes"], "unrecognized arguments: yes"),
    (["selectivity"], ["--layers"], "expected at least one argument"),
])
def test_sweep_mistakes_are_one_line_naming_the_option(names, argv, message):
    with pytest.raises(ConfigError) as e:
        sweep_options(names, argv)
    text = _one_line(e)
    assert text.startswith("--analysis-args") and message in text, text


# --------------------------------------------------------------------------- the registry

def test_every_registered_analysis_is_one_module_holding_all_of_it():
    """Each name maps to the module that holds its Options, compute, write and sweep headline,
    and `seltrain analyze` offers exactly those names, in the registry's order."""
    import inspect

    from seltrain.analysis.options import AnalysisOptions
    from seltrain.analysis.registry import ANALYSES
    from seltrain.cli import build_parser

    assert list(ANALYSES) == ["selectivity", "ablation", "orientation", "robustness",
                              "dimensionality", "gradients"]
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
    assert list(analyze._subparsers._group_actions[0].choices) == list(ANALYSES)


def test_an_unknown_analysis_or_foreign_options_are_refused():
    from seltrain.analysis.commands import run_analysis
    from seltrain.analysis.registry import analysis

    with pytest.raises(ConfigError, match=r"^unknown analysis 'ablaton' \(did you mean "
                                          r"'ablation'\?\); choose from selectivity, "):
        analysis("ablaton")
    with pytest.raises(TypeError, match="ablation takes AblationOptions, not GradientsOptions"):
        run_analysis("ablation", "/nonexistent", GradientsOptions())


def test_no_analysis_file_is_over_600_lines_but_the_corruption_catalogue():
    import glob
    import os

    from helpers import REPO

    long = {os.path.basename(p): n for p in glob.glob(os.path.join(REPO, "seltrain", "analysis",
                                                                  "*.py"))
            if (n := sum(1 for _ in open(p))) > 600}
    assert set(long) <= {"corruptions.py"}, long
