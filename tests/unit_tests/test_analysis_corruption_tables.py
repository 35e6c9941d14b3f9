"""The corruptions' per-dataset parameter tables (seltrain/analysis/corruption_tables.py):
each dataset gets the table its released -C set was made with, holding the numbers of the
reference scripts (make_cifar_c.py, make_tinyimagenet_c.py, make_imagenet_c.py)."""
from __future__ import annotations

import pytest

from seltrain.analysis import corruptions as rob
from seltrain.analysis.corruption_tables import DATASET_TABLES, TABLES, get_table, table_for
from seltrain.errors import ConfigError


def test_each_dataset_gets_its_released_sets_table_with_the_reference_numbers():
    assert {d: table_for(d).name for d in DATASET_TABLES} == {
        "cifar10": "cifar", "cifar100": "cifar", "fashion_mnist": "cifar", "synthetic": "cifar",
        "tinyimagenet": "tiny", "imagefolder": "imagenet"}
    c, t, i = TABLES["cifar"], TABLES["tiny"], TABLES["imagenet"]
    assert (c.native_size, t.native_size, i.native_size) == (32, 64, 224)
    # make_cifar_c.py lines 131, 334, 342, 364, 167, 216
    assert c.params["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert c.params["contrast"] == (0.75, 0.5, 0.4, 0.3, 0.15)
    assert c.params["brightness"] == (0.05, 0.1, 0.15, 0.2, 0.3)
    assert c.params["jpeg_compression"] == (80, 65, 58, 50, 40)
    assert c.params["glass_blur"][0] == (0.05, 1, 1)
    assert c.params["saturate"][4] == (2.5, 0.2) and c.params["speckle_noise"][0] == 0.06
    # make_tinyimagenet_c.py lines 249, 452, 460, 482, 285, 471, 503-507
    assert t.params["gaussian_noise"] == (0.04, 0.08, 0.12, 0.15, 0.18)
    assert t.params["contrast"] == (0.4, 0.3, 0.2, 0.1, 0.05)
    assert t.params["brightness"] == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert t.params["jpeg_compression"] == (65, 58, 50, 40, 25)
    assert t.params["glass_blur"][3] == (0.7, 2, 1) and t.params["saturate"][4] == (30, 0.2)
    assert t.params["elastic_transform"][4] == pytest.approx((64 * 0.16, 64 * 0.03, 64 * 0.02))
    # make_imagenet_c.py lines 250, 315, 347-351, 391-395, 540, 520
    assert i.params["gaussian_noise"][4] == 0.38 and i.params["defocus_blur"][4] == (10, 0.5)
    assert i.params["zoom_blur"][4] == (1.31, 0.03) and i.params["frost"][4] == (0.6, 0.75)
    assert i.params["elastic_transform"][0] == pytest.approx((488, 170.8, 24.4))  # 244, sic
    assert i.params["jpeg_compression"] == (25, 18, 15, 10, 7)
    assert (c.frost_resize, t.frost_resize, i.frost_resize) == (0.2, 0.3, 1.0)
    assert (c.release_jpeg_quality, t.release_jpeg_quality, i.release_jpeg_quality) == (
        None, 85, 85)
    for tab in TABLES.values():
        assert set(tab.params) == set(tab.lines) == set(rob.ALL_CORRUPTIONS)
        assert all(len(v) == 5 for v in tab.params.values())
    with pytest.raises(ConfigError, match="corruption-table"):
        table_for("mnist")
    with pytest.raises(ConfigError, match="unknown corruption table"):
        get_table("svhn")
