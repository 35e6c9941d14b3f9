"""``seltrain analyze``'s command layer (seltrain/analysis/commands.py): the strict reading of
`seltrain report --analysis-args` into each chosen analysis' options (sweep_options): each
analysis gets the options it has, a shared option reaches every analysis taking it, and a
mistake is one line naming the option."""
from __future__ import annotations

import pytest

from seltrain.analysis.commands import sweep_options
from seltrain.analysis.dimensionality import DimensionalityOptions
from seltrain.analysis.gradients import GradientsOptions
from seltrain.analysis.robustness import RobustnessOptions
from seltrain.analysis.unit_selectivity import SelectivityOptions
from seltrain.errors import ConfigError


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


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
    (["selectivity"], ["--format", "pdf"], "give seltrain report --format"),
    (["ablation"], ["--cumulative", "yes"], "unrecognized arguments: yes"),
    (["selectivity"], ["--layers"], "expected at least one argument"),
])
def test_sweep_mistakes_are_one_line_naming_the_option(names, argv, message):
    with pytest.raises(ConfigError) as e:
        sweep_options(names, argv)
    text = _one_line(e)
    assert text.startswith("--analysis-args") and message in text, text
