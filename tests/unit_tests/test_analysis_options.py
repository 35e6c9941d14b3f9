"""The analyses' typed options (each analysis' own, on seltrain/analysis/options.py's
``AnalysisOptions`` and ``option()``): defaults, text parsed into typed values, and a bad
value as one line naming the option."""
from __future__ import annotations

from dataclasses import fields

import pytest

from seltrain.analysis.ablation import AblationOptions
from seltrain.analysis.dimensionality import DimensionalityOptions
from seltrain.analysis.gradients import GradientsOptions
from seltrain.analysis.options import default_shown
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
    # orientation ablates on the whole test split by default, as Ukita's ablation_selective
    assert OrientationOptions().max_images == 0
    field = next(f for f in fields(OrientationOptions) if f.name == "max_images")
    assert default_shown(field) == "all"
    assert AblationOptions(layers=["layer1.0"]).layers == ("layer1.0",)
    assert SelectivityOptions().format == ("png",)
    assert SelectivityOptions(format="PDF, svg").format == ("pdf", "svg")
    assert SelectivityOptions(format=["svg"]).format == ("svg",)


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
    (lambda: SelectivityOptions(format="png,jpg"), ("--format png,jpg", "unknown format 'jpg'",
                                                    "png, svg, pdf")),
    (lambda: OrientationOptions(format=["tiff"]), ("--format tiff", "png, svg, pdf")),
])
def test_a_bad_value_is_one_line_naming_the_option(make, names):
    with pytest.raises(ConfigError) as e:
        make()
    text = _one_line(e)
    for name in names:
        assert name in text, text
