"""The analyses in a run's TensorBoard (seltrain/analysis/tb_views.py): a tiny run trained here,
analysed, and its tb/ read back with TensorBoard's own EventAccumulator: the headline scalars
equal the analysis' summary, at the best epoch; the HParams entry declares the analyses' tags
from the run's start; the custom-scalars layout opens on SI and accuracy; the training events
are never rewritten."""
from __future__ import annotations

import hashlib
import json
import os
import re
from types import SimpleNamespace

import pytest

from helpers import REPO
from seltrain.analysis import tb_views
from seltrain.analysis.commands import run_analysis
from seltrain.analysis.registry import ANALYSES
from seltrain.analysis.unit_selectivity import SelectivityOptions

# 2 epochs of 64 8-px images: about 4 s on 2 cores, the analysis 2 s.
TINY_RUN = ["data.synthetic.train_size=64", "data.synthetic.test_size=32",
            "data.synthetic.image_size=8", "data.val_size=16", "train.batch_size=32",
            "train.epochs=2", "run.progress=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    from seltrain.config import load_config
    from seltrain.trainer import Trainer

    out = tmp_path_factory.mktemp("tb_views")
    cfg = load_config(os.path.join(REPO, "configs/synthetic.yaml"),
                      [*TINY_RUN, f"run.out_dir={out}", "run.name=r"])
    Trainer(cfg).fit()
    return str(out / "r")


def _accumulator(run_dir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tb"), size_guidance={"scalars": 0,
                                                                      "tensors": 0})
    acc.Reload()
    return acc


def _digests(folder: str) -> dict[str, str]:
    return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(folder))}


def test_the_headline_goes_into_the_runs_tensorboard_and_the_latest_wins(run):
    tb = os.path.join(run, "tb")
    before = _digests(tb)
    (first,) = run_analysis("selectivity", run, SelectivityOptions(max_images=16, device="cpu"))
    after = _digests(tb)
    # The training events are untouched: the same files, byte for byte, plus one new file.
    assert {f: after[f] for f in before} == before
    (new,) = set(after) - set(before)
    assert new.endswith(f"{tb_views.SUFFIX}.selectivity")

    best_epoch = json.load(open(os.path.join(run, "summary.json")))["best_epoch"]
    tag = "analysis/selectivity/mean_si"
    (point,) = _accumulator(run).Scalars(tag)
    assert point.value == pytest.approx(first["mean_si"], abs=1e-6)
    assert point.step == best_epoch == 1  # best.pt's epoch: beside that epoch's test/si_mean

    # A rerun on other images adds a newer file; its number is the tag's last point, which
    # the scalar chart's latest value and the HParams table show.
    (second,) = run_analysis("selectivity", run, SelectivityOptions(max_images=32, device="cpu",
                                                                   force=True))
    assert abs(second["mean_si"] - first["mean_si"]) > 1e-4
    points = _accumulator(run).Scalars(tag)
    assert [p.value for p in points] == pytest.approx([first["mean_si"], second["mean_si"]],
                                                      abs=1e-6)
    assert {f: _digests(tb)[f] for f in before} == before
    # What the HParams table reads: TensorBoard's data provider's last scalar of the run.
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(tb)
    mux.Reload()
    last = data_provider.MultiplexerDataProvider(mux, tb).read_last_scalars(
        context.RequestContext(), experiment_id="", plugin_name="scalars")
    assert last["."][tag].value == pytest.approx(second["mean_si"], abs=1e-6)


def test_the_hparams_entry_declares_every_analysis_headline(run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = _accumulator(run).PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    declared = [m.name.tag for m in data.experiment.metric_infos]
    assert declared[:4] == ["hparam/val_acc", "hparam/test_acc", "hparam/test_si",
                            "hparam/epochs"]  # the training metrics, as before
    assert declared[4:] == tb_views.headline_tags()
    assert {"analysis/selectivity/mean_si", "analysis/robustness/mean_pgd_accuracy",
            "analysis/ablation/mean_overall_drop", "analysis/orientation/mean_gosi",
            "analysis/robustness/mean_corruption_accuracy"} <= set(declared)
    assert len(declared) == 4 + sum(len(m.SWEEP_HEADLINE) for m in ANALYSES.values()) == 24


def test_the_layout_opens_on_si_and_accuracy_and_names_only_the_runs_tags(run):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    acc = _accumulator(run)
    (event,) = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == ["selectivity & accuracy", "analyses",
                                                 "throughput"]
    first, analyses, throughput = layout.category
    assert [c.title for c in first.chart] == ["mean SI", "SI per layer (val)",
                                              "SI per layer (test)", "accuracy"]
    assert list(first.chart[0].multiline.tag) == ["^val/si_mean$", "^test/si_mean$"]
    assert [c.title for c in analyses.chart] == list(ANALYSES)
    assert [c.title for c in throughput.chart] == ["images/s (steps)", "images/s (epochs)"]
    # Every regex of the run's own charts matches a tag the run wrote: 9 layers per SI chart.
    scalars = acc.Tags()["scalars"]
    for chart in [*first.chart, *throughput.chart]:
        for regex in chart.multiline.tag:
            hits = [t for t in scalars if re.search(regex, t)]
            assert len(hits) == (9 if "per layer" in chart.title else 1), (regex, hits)


def test_the_layout_follows_the_recipe():
    layout = tb_views.run_layout(has_val=False, eval_si=False,
                                 hook_tags=["orientation/osi_mean"])
    assert layout["selectivity & accuracy"] == {
        "accuracy": ["Multiline", ["^test/acc$"]],
        "orientation/osi_mean": ["Multiline", ["^orientation/osi_mean/"]]}
    assert list(layout) == ["selectivity & accuracy", "analyses", "throughput"]


def test_targets_without_a_runs_tensorboard_get_nothing(tmp_path):
    # A network seltrain did not train (its target folder), and a run without tb/.
    (tmp_path / "tb").mkdir()
    spec = SimpleNamespace(spec="torchvision:resnet18", run_dir=str(tmp_path), ckpt={})
    assert tb_views.write_headline(spec, "selectivity", {"mean_si": 0.5}) is None
    bare = tmp_path / "no_tb"
    bare.mkdir()
    run = SimpleNamespace(spec=None, run_dir=str(bare), ckpt={"epoch": 3})
    assert tb_views.write_headline(run, "selectivity", {"mean_si": 0.5}) is None
    assert os.listdir(tmp_path / "tb") == [] and os.listdir(bare) == []
    # Headlines the analysis did not measure (None, NaN) get no point, and no file at all.
    run = SimpleNamespace(spec=None, run_dir=str(tmp_path), ckpt={"epoch": 3})
    assert tb_views.write_headline(run, "robustness", {"mean_fgsm_accuracy": None,
                                                       "mean_pgd_accuracy": float("nan")}) is None
    assert os.listdir(tmp_path / "tb") == []
