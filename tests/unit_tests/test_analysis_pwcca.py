"""Projection-weighted CCA (seltrain/analysis/pwcca.py) against cases worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from seltrain.analysis.pwcca import PwccaOptions, cca, pwcca, svd_reduce
from seltrain.errors import ConfigError


def orthonormal_centred(n: int, k: int, seed: int = 0) -> np.ndarray:
    """k orthonormal, centred N-vectors (columns)."""
    z = np.random.default_rng(seed).standard_normal((n, k))
    q, _ = np.linalg.qr(z - z.mean(0))
    return q


def test_identical_and_linearly_mapped_representations_give_1():
    x = np.random.default_rng(1).standard_normal((200, 6))
    assert pwcca(x, x)["pwcca"] == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((6, 6)))
    r = pwcca(x, x @ q)  # an orthogonal rotation of the units
    assert r["pwcca"] == pytest.approx(1.0, abs=1e-12) and r["directions"] == 6
    np.testing.assert_allclose(r["rho"], 1.0, atol=1e-12)
    # any invertible linear map, plus an offset, is invisible to CCA too
    m = np.random.default_rng(3).standard_normal((6, 6)) + 3 * np.eye(6)
    assert pwcca(x @ q, x @ m + 5.0)["pwcca"] == pytest.approx(1.0, abs=1e-10)


def test_a_two_direction_case_worked_out_by_hand():
    # a, b, c orthonormal and centred. X = [3a, b]; Y = [a, cos(t) b + sin(t) c].
    # Canonical pairs: (a, a) with rho 1 and (b, cos(t) b + sin(t) c) with rho cos(t).
    # X's weights: |<a, 3a>| + |<a, b>| = 3 and |<b, 3a>| + |<b, b>| = 1 -> 3/4, 1/4, so
    # PWCCA(X, Y) = 3/4 + cos(t)/4; the mean CCA is (1 + cos(t)) / 2. From Y's side both
    # directions weigh 1 + |<a, y2>| = 1: PWCCA(Y, X) = (1 + cos(t)) / 2.
    a, b, c = orthonormal_centred(50, 3).T
    t = math.pi / 3  # cos(t) = 1/2
    x = np.stack([3 * a, b], 1)
    y = np.stack([a, math.cos(t) * b + math.sin(t) * c], 1)
    r = pwcca(x, y)
    np.testing.assert_allclose(r["rho"], [1.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(r["weights"], [0.75, 0.25], atol=1e-12)
    assert r["pwcca"] == pytest.approx(0.875, abs=1e-12)
    assert r["mean_cca"] == pytest.approx(0.75, abs=1e-12)
    assert pwcca(y, x)["pwcca"] == pytest.approx(0.75, abs=1e-12)


def test_independent_random_representations_are_dissimilar():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((4000, 8)), rng.standard_normal((4000, 8))
    r = pwcca(x, y)
    # canonical correlations of independent data are about sqrt(D / N) = 0.045 each
    assert r["pwcca"] < 0.1 and r["rho"].max() < 0.15


def test_rank_deficient_layers_and_the_svd_step():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((300, 3))
    x = base @ rng.standard_normal((3, 10))  # 10 units spanning 3 directions
    y = base @ rng.standard_normal((3, 7))
    r = pwcca(x, y)
    assert r["directions"] == 3 and r["pwcca"] == pytest.approx(1.0, abs=1e-10)
    # the SVCCA reduction keeps the fewest components for the share: 3 of rank 3 for 100%
    assert svd_reduce(x - x.mean(0), 1.0).shape == (300, 3)
    assert pwcca(x, y, svd_share=0.99)["pwcca"] == pytest.approx(1.0, abs=1e-10)
    rho, h = cca(x, y)
    np.testing.assert_allclose(h.T @ h, np.eye(3), atol=1e-12)  # orthonormal variates
    assert math.isnan(pwcca(np.ones((10, 2)), y[:10])["pwcca"])  # a constant layer


def test_options():
    assert PwccaOptions(svd_share="0.99").svd_share == 0.99
    with pytest.raises(ConfigError, match="--svd-share 1.5"):
        PwccaOptions(svd_share="1.5")
