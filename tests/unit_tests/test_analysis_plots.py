"""The analysis figures (seltrain/analysis/plots.py): what each one plots, read back from the
figure it saves (bar heights, line and scatter data, reference lines, labels, titles), and
the PNG it writes whole at the path it was given."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import PathCollection

from seltrain.analysis import plots

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch):
    """Each figure a plot function saves, as it was when saved: {file name: Figure}."""
    figures = {}
    save = plots._save

    def keep(fig, path, title):
        out = save(fig, path, title)
        figures[out.name] = fig
        return out

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _bars(ax) -> np.ndarray:
    return np.array([p.get_height() for p in ax.patches])


def _line(ax, label=None, i=0):
    lines = [ln for ln in ax.get_lines() if label is None or ln.get_label() == label]
    return np.asarray(lines[i].get_xdata(), float), np.asarray(lines[i].get_ydata(), float)


def _errorbar(ax, label) -> np.ndarray:
    """The means an ``errorbar`` call labelled ``label`` drew (its label is the container's)."""
    (bar,) = [c for c in ax.containers if c.get_label() == label]
    return np.asarray(bar.lines[0].get_ydata(), float)


def _vertical(ax, label_start: str) -> float:
    (x,) = {float(x) for ln in ax.get_lines() if ln.get_label().startswith(label_start)
            for x in ln.get_xdata()}
    return x


def _scatter(ax, i=0) -> np.ndarray:
    return [c for c in ax.collections if isinstance(c, PathCollection)][i].get_offsets().data


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _ticks(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def _written(tmp_path, name):
    path = tmp_path / name
    assert path.read_bytes()[:8] == PNG and sorted(p.name for p in tmp_path.iterdir()
                                                   if p.name.startswith(".")) == []
    return path


def test_histograms_count_the_finite_values_of_each_layer(tmp_path, drawn):
    rng = np.random.default_rng(0)
    layers = {"layer1": rng.uniform(0, 1, 30), "layer2": np.r_[rng.uniform(0, 1, 9), np.nan]}
    plots.histograms(layers, tmp_path / "a" / "si.png", xlabel="SI", value_range=(0, 1),
                     threshold=0.5, title="selectivity")
    assert (tmp_path / "a" / "si.png").read_bytes()[:8] == PNG  # parents made
    fig = drawn["si.png"]
    assert fig._suptitle.get_text() == "selectivity"
    axes = _panels(fig)
    assert [ax.get_title() for ax in axes] == ["layer1", "layer2"]
    for ax, v in zip(axes, layers.values()):
        finite = v[np.isfinite(v)]
        np.testing.assert_array_equal(_bars(ax), np.histogram(finite, 20, (0, 1))[0])
        assert _vertical(ax, "mean") == pytest.approx(finite.mean())
        assert _vertical(ax, "threshold") == 0.5
        assert _legend(ax) == [f"mean {finite.mean():.3f}", "threshold 0.5"]
        assert ax.get_xlabel() == "SI"


def test_layer_means_plot_the_nan_mean_and_its_sem_per_layer(tmp_path, drawn):
    values = {"a": [1.0, 2.0, 3.0], "b": [4.0, np.nan, 6.0], "c": [7.0]}
    plots.layer_means(values, tmp_path / "means.png", ylabel="mean SI")
    _written(tmp_path, "means.png")
    (ax,) = _panels(drawn["means.png"])
    x, y = _line(ax)
    np.testing.assert_array_equal(x, [0, 1, 2])
    np.testing.assert_allclose(y, [2.0, 5.0, 7.0])
    # the error bars: mean -/+ SEM (std with ddof 1 over the finite units / sqrt(n)); 0 alone
    (bars,) = [c for c in ax.collections if not isinstance(c, PathCollection)]
    spans = [seg[:, 1] for seg in bars.get_segments()]
    sem = [1 / np.sqrt(3), np.sqrt(2) / np.sqrt(2), 0.0]
    np.testing.assert_allclose([s[1] - s[0] for s in spans], [2 * e for e in sem], atol=1e-12)
    assert _ticks(ax) == ["a", "b", "c"] and ax.get_ylabel() == "mean SI"


def test_cumulative_ablation_plots_the_three_orders(tmp_path, drawn):
    f = np.linspace(0, 1, 5)
    cum = {"layer": "layer1", "fractions": f, "si_high_first": 1 - f, "si_low_first": 1 - f / 2,
           "random_mean": 1 - 0.7 * f, "random_std": np.full(5, 0.05)}
    plots.cumulative_ablation(cum, tmp_path / "cum.png")
    (ax,) = _panels(drawn["cum.png"])
    assert drawn["cum.png"]._suptitle.get_text() == "cumulative ablation, layer1"
    for label, key in (("SI high first", "si_high_first"), ("SI low first", "si_low_first"),
                       ("random", "random_mean")):
        x, y = _line(ax, label)
        np.testing.assert_allclose(x, f)
        np.testing.assert_allclose(y, cum[key])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]  # mean +/- std, filled
    assert band.min() == pytest.approx((1 - 0.7 - 0.05)) and band.max() == pytest.approx(1.05)
    # no random curve (nor band) when it was not computed
    plots.cumulative_ablation({**cum, "random_mean": np.full(5, np.nan)}, tmp_path / "c2.png")
    (ax,) = _panels(drawn["c2.png"])
    assert [ln.get_label() for ln in ax.get_lines()] == ["SI high first", "SI low first"]
    assert len(ax.collections) == 0


def test_drop_scatter_places_each_unit_and_names_rho(tmp_path, drawn):
    si, drop = np.array([0.1, 0.5, 0.9]), np.array([0.0, 0.2, 0.4])
    plots.drop_scatter(si, drop, tmp_path / "scatter.png", rho=0.1234)
    (ax,) = _panels(drawn["scatter.png"])
    np.testing.assert_allclose(_scatter(ax), np.c_[si, drop])
    assert _legend(ax) == ["Spearman rho = 0.12"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("class selectivity index", "max class drop")
    plots.drop_scatter(si, drop, tmp_path / "norho.png")
    assert _panels(drawn["norho.png"])[0].get_legend() is None


def test_orientation_distributions_are_osi_over_gosi_with_the_share_above_threshold(
        tmp_path, drawn):
    osi = {"a": [0.1, 0.2, 0.95], "b": [0.5, 0.5]}
    gosi = {"a": [0.1, 0.4, 0.5, 0.9], "b": [0.2, 0.3]}
    plots.orientation_distributions(osi, gosi, tmp_path / "osi.png")
    axes = _panels(drawn["osi.png"])
    assert [ax.get_title() for ax in axes] == ["a OSI", "b OSI", "a gOSI", "b gOSI"]
    for ax, v in zip(axes, [*osi.values(), *gosi.values()]):
        np.testing.assert_array_equal(_bars(ax), np.histogram(v, 20, (0, 1))[0])
    assert _legend(axes[2]) == ["> 0.33: 75%"] and _legend(axes[3]) == ["> 0.33: 0%"]
    assert _vertical(axes[2], ">") == 0.33 and axes[0].get_legend() is None


def test_null_distributions_overlay_fractions_of_units(tmp_path, drawn):
    real = {"a": [0.05, 0.15, 0.15, 0.95]}
    null = {"a": np.array([[0.05, 0.05], [0.05, 0.55]])}  # two permutations, 4 units
    plots.null_distributions(real, real, null, null, tmp_path / "null.png")
    top, bottom = _panels(drawn["null.png"])
    assert (top.get_title(), bottom.get_title()) == ("a OSI", "a gOSI")
    heights = _bars(top).reshape(2, 10)  # gratings, then permuted
    np.testing.assert_allclose(heights[0], np.histogram(real["a"], 10, (0, 1))[0] / 4)
    np.testing.assert_allclose(heights[1], [0.75, 0, 0, 0, 0, 0.25, 0, 0, 0, 0])
    assert _legend(top) == ["gratings", "permuted"]


def test_orientation_ranges_count_the_tuned_units_only(tmp_path, drawn):
    ranges = {"a": [10.0, 40.0, 170.0, np.nan, 95.0]}
    gosi = {"a": [0.9, 0.1, 0.5, 0.9, 0.34]}
    plots.orientation_ranges(ranges, gosi, tmp_path / "range.png")
    (ax,) = _panels(drawn["range.png"])
    assert ax.get_title() == "a (gOSI > 0.33: 3)"
    np.testing.assert_array_equal(_bars(ax), np.histogram([10.0, 170.0, 95.0], 12, (0, 180))[0])


def test_gosi_split_ablation_plots_top_and_bottom_per_layer(tmp_path, drawn):
    split = {n: {"top": {"ce_increase_mean": 0.5 + i, "ce_increase_sem": 0.1},
                 "bottom": {"ce_increase_mean": 0.1 * i, "ce_increase_sem": 0.01}}
             for i, n in enumerate(("conv1", "conv2"))}
    plots.gosi_split_ablation(split, tmp_path / "split.png")
    (ax,) = _panels(drawn["split.png"])
    np.testing.assert_allclose(_errorbar(ax, "top gOSI ablated"), [0.5, 1.5])
    np.testing.assert_allclose(_errorbar(ax, "bottom gOSI ablated"), [0.0, 0.1])
    assert _ticks(ax) == ["conv1", "conv2"]


def test_tuning_curves_one_panel_per_unit(tmp_path, drawn):
    R = np.random.default_rng(0).uniform(0, 1, (20, 12))
    plots.tuning_curves(R, tmp_path / "tuning.png")
    axes = _panels(drawn["tuning.png"])
    assert [ax.get_title() for ax in axes] == [f"unit {u}" for u in range(16)]  # the first 16
    for u, ax in enumerate(axes):
        x, y = _line(ax)
        np.testing.assert_allclose(x, np.arange(12) * 15.0)
        np.testing.assert_array_equal(y, R[u])
    plots.tuning_curves(R, tmp_path / "some.png", units=[3, 7], orientations_deg=range(0, 180,
                                                                                         15))
    axes = _panels(drawn["some.png"])
    assert [ax.get_title() for ax in axes] == ["unit 3", "unit 7"]
    np.testing.assert_array_equal(_line(axes[1])[1], R[7])


def test_corruption_accuracy_starts_at_the_clean_accuracy_and_ends_with_the_mean(tmp_path,
                                                                                 drawn):
    corr = {"severities": [1, 2, 3, 4, 5], "clean_acc": 0.9, "mean_corruption_accuracy": 0.6,
            "accuracy": {"fog": np.linspace(0.8, 0.4, 5), "contrast": np.linspace(0.85, 0.3, 5)},
            "source": "on-the-fly", "table_title": "CIFAR-10-C"}
    plots.corruption_accuracy(corr, tmp_path / "corr.png")
    fig = drawn["corr.png"]
    axes = _panels(fig)
    assert [ax.get_title() for ax in axes] == ["fog", "contrast", "mean"]
    for ax, acc in zip(axes, [corr["accuracy"]["fog"], corr["accuracy"]["contrast"],
                              (corr["accuracy"]["fog"] + corr["accuracy"]["contrast"]) / 2]):
        x, y = _line(ax)
        np.testing.assert_array_equal(x, [0, 1, 2, 3, 4, 5])
        np.testing.assert_allclose(y, [0.9, *acc])
    assert fig._suptitle.get_text() == ("mean corruption accuracy 0.600: on the fly, "
                                        "CIFAR-10-C table")
    released = {**corr, "accuracy": {"fog": corr["accuracy"]["fog"]},
                "source": "released files", "root": "/data/CIFAR-10-C"}
    plots.corruption_accuracy(released, tmp_path / "rel.png")
    assert [ax.get_title() for ax in _panels(drawn["rel.png"])] == ["fog"]  # no mean of one
    assert drawn["rel.png"]._suptitle.get_text().endswith(": released files (CIFAR-10-C)")


def test_attack_accuracy_one_line_per_attack(tmp_path, drawn):
    atk = {"attack": "pgd", "eps": [0, 1 / 255, 4 / 255], "accuracy": np.array([0.9, 0.5, 0.1])}
    plots.attack_accuracy(atk, tmp_path / "atk.png")
    (ax,) = _panels(drawn["atk.png"])
    x, y = _line(ax, "pgd")
    np.testing.assert_allclose(x, atk["eps"])
    np.testing.assert_allclose(y, atk["accuracy"])
    fgsm = {**atk, "accuracy": np.array([0.9, 0.7, 0.3])}
    plots.attack_accuracy({"pgd": atk, "fgsm": fgsm}, tmp_path / "atk2.png")
    (ax,) = _panels(drawn["atk2.png"])
    assert _legend(ax) == ["pgd", "fgsm"]
    np.testing.assert_allclose(_line(ax, "fgsm")[1], [0.9, 0.7, 0.3])


def test_dimensionality_figures_plot_components_per_layer_and_condition(tmp_path, drawn):
    names = ["layer1", "layer2", "layer3"]
    dim = {c: {n: {"n_components": k + i} for i, n in enumerate(names)}
           for c, k in (("clean", 5), ("adversarial", 9))}
    plots.dimensionality(dim, tmp_path / "dim.png")
    (ax,) = _panels(drawn["dim.png"])
    np.testing.assert_array_equal(_line(ax, "clean")[1], [5, 6, 7])
    np.testing.assert_array_equal(_line(ax, "adversarial")[1], [9, 10, 11])
    assert _ticks(ax) == names
    layer = {"n_components": 3}
    result = {"representation": {"clean": {"a": layer, "b": layer},
                                 "adversarial": {"a": layer, "b": {"n_components": 7}}},
              "change": {"adversarial": {"a": layer, "b": layer}}}
    plots.dimensionality_readings(result, tmp_path / "d.png", title="t")
    left, right = _panels(drawn["d.png"])
    assert left.get_title() == "representation (of the inputs)"
    assert right.get_title() == "change (perturbed - clean)"
    np.testing.assert_array_equal(_line(left, "adversarial")[1], [3, 7])
    np.testing.assert_array_equal(_line(right, "adversarial")[1], [3, 3])
    assert _legend(right) == ["adversarial"] and drawn["d.png"]._suptitle.get_text() == "t"


def test_gradient_variability_plots_each_statistic_per_layer(tmp_path, drawn):
    means = {f"layer{i}": {f"{a}_{s}": 0.1 * i + (0.5 if a == "across_units" else 0.2)
                           for a in ("across_samples", "across_units")
                           for s in ("direction", "norm_cv", "zero_fraction")}
             for i in range(3)}
    plots.gradient_variability(means, tmp_path / "g.png")
    axes = _panels(drawn["g.png"])
    assert [ax.get_title() for ax in axes] == ["1 - mean pairwise cosine", "CV of gradient norm",
                                              "share of zero gradients"]
    np.testing.assert_allclose(_line(axes[0], "across samples")[1], [0.2, 0.3, 0.4])
    np.testing.assert_allclose(_line(axes[1], "across units")[1], [0.5, 0.6, 0.7])
    assert _legend(axes[2]) == ["across samples"]  # one number per layer


def test_panels_against_join_the_points_in_x_order(tmp_path, drawn):
    plots.panels_against([0.0, -1.0, 1.0], {"layer1": {"adversarial": [3, 4, 5],
                                                       "corrupted": [1, 2, np.nan]},
                                            "layer2": {"adversarial": [1, 1, 1]}},
                         tmp_path / "p.png", xlabel="alpha", ylabel="increase")
    one, two = _panels(drawn["p.png"])
    x, y = _line(one, "adversarial")
    np.testing.assert_array_equal(x, [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(y, [4, 3, 5])
    np.testing.assert_array_equal(_line(one, "corrupted")[1], [2, 1, np.nan])
    assert (two.get_title(), two.get_xlabel()) == ("layer2", "alpha")
    assert _legend(one) == ["adversarial", "corrupted"] and two.get_legend() is None


def test_against_scatters_each_quantity(tmp_path, drawn):
    plots.against([0.1, 0.2, 0.3], {"mCA": [0.5, 0.6, 0.7]}, tmp_path / "vs.png",
                  xlabel="mean SI", ylabel="accuracy")
    _written(tmp_path, "vs.png")
    (ax,) = _panels(drawn["vs.png"])
    np.testing.assert_allclose(_scatter(ax), [[0.1, 0.5], [0.2, 0.6], [0.3, 0.7]])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("mean SI", "accuracy")
    plots.against([1, 2], {"a": [0, 1], "b": [1, 0]}, tmp_path / "two.png", xlabel="x",
                  ylabel="y")
    (ax,) = _panels(drawn["two.png"])
    np.testing.assert_allclose(_scatter(ax, 1), [[1, 1], [2, 0]])
    assert _legend(ax) == ["a", "b"]


def test_a_figure_is_written_whole_in_the_format_its_name_says(tmp_path):
    plots.against([1], {"a": [1]}, tmp_path / "f.pdf", xlabel="x", ylabel="y")
    plots.against([1], {"a": [1]}, tmp_path / "f.svg", xlabel="x", ylabel="y")
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:1000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.svg"]  # no temporaries


def test_each_chosen_format_is_written_valid_and_the_first_is_returned(tmp_path):
    with plots.formats("pdf,png,svg,pdf"):  # each once, in the order given
        out = plots.against([1, 2], {"a": [1, 3]}, tmp_path / "f.png", xlabel="x", ylabel="y")
    assert out == tmp_path / "f.pdf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png", "f.svg"]
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    svg = (tmp_path / "f.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    # the vector files carry no date: the same numbers redrawn are the same bytes
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with plots.formats(("svg", "pdf")):
        plots.against([1, 2], {"a": [1, 3]}, tmp_path / "f.png", xlabel="x", ylabel="y")
    assert all((tmp_path / n).read_bytes() == first[n] for n in ("f.svg", "f.pdf"))
    # outside a block, the file name says the format again
    plots.against([1], {"a": [1]}, tmp_path / "g.png", xlabel="x", ylabel="y")
    assert sorted(p.name for p in tmp_path.iterdir() if p.stem == "g") == ["g.png"]


@pytest.mark.parametrize("text,message", [
    ("png,jpg", "unknown format 'jpg'; choose from png, svg, pdf"),
    ("", "give one or more of png, svg, pdf"), ("eps", "unknown format 'eps'")])
def test_an_unknown_format_names_it_and_the_choices(text, message):
    with pytest.raises(ValueError, match=message):
        plots.parse_formats(text)

