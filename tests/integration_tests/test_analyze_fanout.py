"""`seltrain analyze --address` and `seltrain report --analyses --address` on a real local Ray.

One Ray for the module (2 CPUs, started here; the CLI runs join it with --address HOST:PORT,
the Python API uses it in-process), and one tiny experiment (two 1-epoch runs of 16 px
synthetic data under exp/trials/). In order:
- the tasks write the very files of the single-process run (JSON and CSV byte for byte),
  one line per finished task, a progress line, and nothing of Ray's on the console; so do
  the chunks of ablation (units, and the cumulative curves' orders), orientation (layers)
  and gradients (unit blocks), merged;
- the Python API (``run_fanout`` with ``FanoutOptions``) and the report's sweep;
- a rerun skips what is done, a changed option recomputes only its analysis, --force all;
- SIGTERM and SIGINT of the driver: exit 143 / 130, finished outputs kept, the rest on rerun.
- results on a disk the workers do not share (a private tmpfs in the driver's mount
  namespace): one line at the first task, nothing written.
"""
from __future__ import annotations

import filecmp
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, run_cli, subprocess_env

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TRAIN = ["data.dataset=synthetic", "data.val_size=64", "data.synthetic.train_size=256",
         "data.synthetic.test_size=128", "data.synthetic.image_size=16", "train.batch_size=64",
         "train.eval_batch_size=128", "train.epochs=1", "run.progress=false"]
# Small and quick: 64 test images, one corruption at one severity, two epsilons.
SEL = ["--max-images", "64", "--device", "cpu"]
ROB = ["--max-images", "64", "--corruptions", "gaussian_noise,contrast", "--severities", "1",
       "--eps", "0,0.01", "--attack", "fgsm", "--device", "cpu"]


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    root = tmp_path_factory.mktemp("fanout")
    for name, alpha in (("a0", 0.0), ("am1", -1.0)):
        r = run_cli("train", "configs/synthetic.yaml", *TRAIN,
                    f"run.out_dir={root / 'exp' / 'trials'}", f"run.name={name}",
                    f"selectivity.alpha={alpha}")
        assert r.returncode == 0, r.stderr[-2000:]
    return root / "exp"


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A local Ray with 2 CPUs; its GCS address for the CLI runs."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", _temp_dir=f"/tmp/seltrain_ray_{os.getuid()}")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _ok(r):
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return r


def _marker(folder):
    return json.load(open(os.path.join(folder, ".seltrain-analysis.json")))


def _same_files(a, b, suffixes=(".json", ".csv")):
    """Every JSON and CSV file of folder ``a`` equals ``b``'s, byte for byte."""
    names = sorted(f for f in os.listdir(a) if f.endswith(suffixes) and not f.startswith("."))
    assert names and names == sorted(f for f in os.listdir(b) if f.endswith(suffixes)
                                     and not f.startswith("."))
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    return names


def test_tasks_write_the_single_process_files(exp, head, tmp_path):
    run = exp / "trials" / "a0"
    for name, args in (("selectivity", SEL), ("robustness", ROB)):
        _ok(run_cli("analyze", name, run, *args, "--out", tmp_path / name))
    r = _ok(run_cli("analyze", "robustness", exp, *ROB, "--address", head))
    lines = r.stdout.splitlines()
    # Robustness in chunks: 2 corruptions x 1 severity, and the FGSM attack; then the merge.
    assert lines[0] == ("8 analysis task(s) on Ray (1 CPU, 0 GPU each); 2 of the 2 analyses "
                        "split into chunks")
    chunks = [ln for ln in lines if ln.startswith("[") and " -> " not in ln]
    assert sorted(ln.split("(chunk ")[1].split(")")[0] for ln in chunks) == sorted(
        ["gaussian_noise severity 1", "contrast severity 1", "fgsm attack"] * 2)
    done = [ln for ln in lines if ln.startswith("[") and " -> " in ln]
    assert len(done) == 2 and {ln.split(" -> ")[1] for ln in done} == {
        str(exp / "trials" / t / "analysis" / "robustness") for t in ("a0", "am1")}
    progress = [ln for ln in lines if ln.startswith("-- ")]
    assert len(progress) == 8 and progress[-1] == "-- 8 of 8 done, 0 running, 0 pending; ETA -"
    assert lines[-1] == "robustness: 2 target(s): 2 analysed, 0 kept from before"
    assert r.stderr == ""  # Ray's own console stays quiet
    out = run / "analysis" / "robustness"
    # The merged chunks write the single-process files, byte for byte.
    assert {"corruptions.csv", "attacks.csv", "robustness.json", "summary.json"} <= set(
        _same_files(tmp_path / "robustness", out))
    res = json.load(open(out / "summary.json"))
    assert 0 <= res["mean_corruption_accuracy"] <= 1
    m = _marker(out)
    assert m["analysis"] == "robustness" and len(m["key"]) == 16
    assert m["headline"]["clean_acc"] == res["clean_acc"]
    # The merge task wrote the headline into each trial's TensorBoard, as one process does:
    # a0 has the --out run's point and the fan-out's, am1 (only fanned out) the fan-out's.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for trial, n in (("a0", 2), ("am1", 1)):
        acc = EventAccumulator(str(exp / "trials" / trial / "tb"))
        acc.Reload()
        points = acc.Scalars("analysis/robustness/mean_corruption_accuracy")
        want = json.load(open(exp / "trials" / trial / "analysis/robustness/summary.json"))
        assert len(points) == n and points[-1].value == pytest.approx(
            want["mean_corruption_accuracy"], abs=1e-6)


def test_ablation_in_unit_and_order_chunks_writes_the_single_process_files(exp, head, tmp_path):
    """Four chunks of every layer's units and, with --cumulative, one per order of the curves
    (SI high first, SI low first, two random orders), merged: the files of one process, byte
    for byte."""
    run = exp / "trials" / "a0"
    args = ["--layers", "layer2.2", "layer3.2", "--max-images", "64", "--device", "cpu",
            "--cumulative", "--n-random", "2"]
    _ok(run_cli("analyze", "ablation", run, *args, "--out", tmp_path / "one"))
    r = _ok(run_cli("analyze", "ablation", run, *args, "--address", head))
    assert "9 analysis task(s) on Ray (1 CPU, 0 GPU each); 1 of the 1 analyses split into chunks" \
        in r.stdout
    assert r.stdout.count("(chunk units part ") == 4
    assert sorted(ln.split("(chunk cumulative, ")[1].split(")")[0] for ln in r.stdout.splitlines()
                  if "(chunk cumulative, " in ln) == [
        "SI high first", "SI low first", "random order 1 of 2", "random order 2 of 2"]
    names = _same_files(tmp_path / "one", run / "analysis" / "ablation")
    assert {"units_layer3.2.csv", "class_drops_layer2.2.csv", "ablation_layer3.2.json",
            "summary.json"} <= set(names)
    layer = json.load(open(run / "analysis" / "ablation" / "ablation_layer3.2.json"))
    assert len(layer["single_unit"]["overall_drop"]) == 64
    cum = layer["cumulative"]
    assert len(cum["random"]) == 2 and len(cum["si_high_first"]) == 11
    assert cum["si_high_first"][0] == cum["baseline_acc"] and cum["n_ablated"][-1] == 64


# Small and quick: orientation's two layers fall in its chunks 2 and 4 (layer2.2's ablation
# reads the shift invariance of layer3.2, in the other chunk); gradients' 16 units in blocks
# of 4, one block per chunk.
CHUNKED = {
    "orientation": ["--layers", "layer2.2", "layer3.2", "--max-images", "16", "--device", "cpu"],
    "gradients": ["--layers", "layer2.2", "layer3.2", "--max-images", "16", "--max-units",
                  "16", "--unit-block", "4", "--batch-size", "8", "--device", "cpu"],
}


@pytest.mark.parametrize("name, label", [("orientation", "layers part "),
                                         ("gradients", "units part ")])
def test_layer_and_unit_block_chunks_write_the_single_process_files(exp, head, tmp_path,
                                                                   name, label):
    """Orientation by runs of layers, gradients by runs of unit blocks: four chunk tasks and
    a merge write the files of one process, byte for byte (about 25 s each on 2 shared
    cores)."""
    run = exp / "trials" / "a0"
    _ok(run_cli("analyze", name, run, *CHUNKED[name], "--out", tmp_path / "one"))
    r = _ok(run_cli("analyze", name, run, *CHUNKED[name], "--address", head, "--force"))
    assert "5 analysis task(s) on Ray (1 CPU, 0 GPU each); 1 of the 1 analyses split into " \
        "chunks" in r.stdout
    assert sorted(ln.split(f"(chunk {label}")[1].split(")")[0] for ln in r.stdout.splitlines()
                  if f"(chunk {label}" in ln) == [f"{j} of 4" for j in range(1, 5)]
    assert {"summary.json", "units_layer2.2.csv", "units_layer3.2.csv"} <= set(
        _same_files(tmp_path / "one", run / "analysis" / name))


def test_python_api_and_the_report_sweep(exp, head, tmp_path):
    from seltrain.analysis.fanout import FanoutOptions, run_fanout
    from seltrain.analysis.robustness import RobustnessOptions
    from seltrain.analysis.unit_selectivity import SelectivityOptions

    opts = {"selectivity": SelectivityOptions(max_images=64, device="cpu")}
    results = run_fanout([str(exp)], opts, FanoutOptions(address=head))  # in 3 chunks each
    assert sorted((os.path.basename(r.run_dir), r.status) for r in results) == [
        ("a0", "done"), ("am1", "done")]
    single = _ok(run_cli("analyze", "selectivity", exp / "trials" / "am1", *SEL, "--out",
                         tmp_path / "sel"))
    assert "mean SI" in single.stdout
    _same_files(tmp_path / "sel", exp / "trials" / "am1" / "analysis" / "selectivity")
    s = {os.path.basename(r.run_dir): r.summary for r in results}
    assert s["am1"]["mean_si"] == json.load(open(tmp_path / "sel" / "selectivity.json"))[
        "mean_si"]
    # The report's sweep: selectivity is kept (same options), robustness was done above.
    r = _ok(run_cli("report", exp, "--analyses", "selectivity,robustness", "--analysis-args",
                    " ".join(SEL[:2] + ROB[2:]), "--address", head))
    assert r.stdout.count(": kept (its outputs for these options") == 4, r.stdout
    table = open(exp / "analysis_results.csv").read().splitlines()
    assert table[0].startswith("trial,alpha,seed,test_acc,mean_si") and len(table) == 3
    assert RobustnessOptions is not None


FACTORY = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 10))
'''


def test_a_network_seltrain_did_not_train_fans_out_like_a_run(head, tmp_path):
    """A --model network's target folder: its tasks write the single-process files, and the
    report of the folder runs them on Ray like a trained run's."""
    (tmp_path / "nets.py").write_text(FACTORY)
    model = ["--model", "nets.py:build", "--data", "synthetic", "--image-size", "16"]
    _ok(run_cli("analyze", "selectivity", *model, *SEL, "--target-dir", "targets/net",
                cwd=tmp_path))
    target = tmp_path / "targets" / "net"
    single = tmp_path / "single"
    os.rename(target / "analysis" / "selectivity", single)
    r = _ok(run_cli("analyze", "selectivity", target, *SEL, "--address", head, cwd=tmp_path))
    assert r.stdout.splitlines()[-1] == "selectivity: 1 target(s): 1 analysed, 0 kept from before"
    # The same numbers, to summation order: the chunks' per-class sums are added in another
    # order than one pass's, and here that moves a few units' SI by about 1e-16.
    ours = json.load(open(target / "analysis" / "selectivity" / "selectivity.json"))
    one = json.load(open(single / "selectivity.json"))
    assert ours["si"].keys() == one["si"].keys() == {"0", "3", "5"}
    for layer, si in one["si"].items():
        assert ours["si"][layer] == pytest.approx(si, abs=1e-12), layer
    assert sorted(os.listdir(single)) == sorted(os.listdir(target / "analysis" / "selectivity"))
    r = _ok(run_cli("report", "targets", "--analyses", "selectivity", "--analysis-args",
                    " ".join(SEL), "--address", head, cwd=tmp_path))
    assert r.stdout.count(": kept (its outputs for these options") == 1, r.stdout
    assert json.load(open(single / "selectivity.json"))["mean_si"] == json.load(open(
        target / "analysis" / "selectivity" / "selectivity.json"))["mean_si"]


def test_rerun_skips_done_tasks_and_recomputes_what_an_option_changes(exp, head):
    args = ["--analyses", "selectivity,robustness", "--analysis-args",
            " ".join(SEL[:2] + ROB[2:]), "--address", head]
    sel = exp / "trials" / "a0" / "analysis" / "selectivity"
    rob = exp / "trials" / "a0" / "analysis" / "robustness"
    _ok(run_cli("report", exp, *args))
    before = {p: _marker(p)["key"] for p in (sel, rob)}
    mtime = os.stat(sel / "selectivity.json").st_mtime_ns
    # One robustness option changed: the two robustness tasks run, selectivity is kept.
    changed = [a.replace("0,0.01", "0,0.02") for a in args]
    r = _ok(run_cli("report", exp, *changed))
    assert r.stdout.count("selectivity of") == 2 and "8 analysis task(s) on Ray" in r.stdout
    assert os.stat(sel / "selectivity.json").st_mtime_ns == mtime
    assert _marker(rob)["key"] != before[rob] and _marker(sel)["key"] == before[sel]
    assert json.load(open(rob / "robustness.json"))["attacks"]["fgsm"]["eps"] == [0, 0.02]
    r = _ok(run_cli("report", exp, *changed, "--force"))
    assert "16 analysis task(s) on Ray" in r.stdout  # selectivity in 3 chunks + merge
    assert os.stat(sel / "selectivity.json").st_mtime_ns != mtime


@pytest.mark.faults
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_driver_keeps_finished_outputs(exp, head, sig, code, tmp_path):
    """2 CPUs per task on a 2-CPU Ray: one task at a time. The driver is stopped once the
    first is written; the other is cancelled, and a rerun does only it."""
    out = tmp_path / "dim"
    args = [sys.executable, "-m", "seltrain", "analyze", "dimensionality", str(exp), *SEL,
            "--corruptions", "gaussian_noise", "--out", str(out), "--address", head,
            "--cpus-per-task", "2"]
    p = subprocess.Popen(args, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    first = None
    t0 = time.time()
    while time.time() - t0 < 240:
        line = p.stdout.readline()
        if line.startswith("[1/2]"):
            first = line.split(" -> ")[1].strip()
            break
    assert first, "no task finished"
    p.send_signal(sig)
    stdout, err = p.communicate(timeout=60)
    assert p.returncode == code, (stdout, err)
    assert len(err.strip().splitlines()) == 1, err
    assert "1 task(s) in flight" in err and "the 1 finished this time are kept" in err
    assert _marker(first)["analysis"] == "dimensionality"
    other = [out / t for t in ("a0", "am1") if str(out / t) != first][0]
    assert not other.exists()
    r = _ok(subprocess.run(args, cwd=REPO, env=subprocess_env(), capture_output=True,
                           text=True, timeout=300))
    assert "1 analysis task(s) on Ray" in r.stdout and ": kept (" in r.stdout
    assert _marker(other)["analysis"] == "dimensionality"


# ----------------------------------------------------------------------------- bad input

def _one_error_line(r, code):
    assert r.returncode == code, (r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seltrain: error: "), r.stderr
    return lines[0]


def test_more_gpus_per_task_than_any_node_is_one_line(exp, head):
    # --force: an earlier test may have left these outputs, and with nothing to run the
    # driver asks the cluster for nothing.
    line = _one_error_line(run_cli("analyze", "selectivity", exp, *SEL, "--address", head,
                                   "--gpus-per-task", "2", "--force"), 2)
    assert ("one analysis task asks for 1 CPU and 2 GPU but no node of the cluster has that "
            "(the largest: 2 CPU, 0 GPU); lower --cpus-per-task/--gpus-per-task") in line


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare(1) for a private mount namespace")
def test_results_folder_the_workers_cannot_see_is_one_line(exp, head, tmp_path):
    """The driver runs in a mount namespace of its own, where the runs' folder is a private
    copy on a tmpfs (a node-local disk): it writes its token there, the workers (outside)
    read the folder beneath, find another token, and the first task ends the analysis in one
    line naming the folder, before any output is written."""
    trials, view = exp / "trials", tmp_path / "view"
    view.mkdir()
    before = {p: os.path.getmtime(p) for p in trials.glob("*/analysis/selectivity/*")}
    argv = [sys.executable, "-m", "seltrain", "analyze", "selectivity", str(exp), *SEL,
            "--address", head, "--force"]
    q = shlex.quote
    script = (f"mount --bind {q(str(trials))} {q(str(view))} && "
              f"mount -t tmpfs tmpfs {q(str(trials))} && cp -a {q(str(view))}/. "
              f"{q(str(trials))}/ && exec {' '.join(map(q, argv))}")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, env=subprocess_env(),
                       capture_output=True, text=True, timeout=300)
    line = _one_error_line(r, 2)
    # The token sits in the first run folder (where its analysis/ goes).
    assert (f"the results folder {trials / 'a0'} is not shared with the worker nodes: " in line
            and "cannot read .seltrain_storage_check, which the driver wrote there; put the "
            "runs on a folder every node mounts (NFS), or analyse them on one machine "
            "without --address" in line), line
    assert not [ln for ln in r.stdout.splitlines() if ln.startswith("[")]  # no task finished
    # Outside the namespace nothing changed: the earlier outputs are as they were.
    assert {p: os.path.getmtime(p) for p in trials.glob("*/analysis/selectivity/*")} == before


def test_a_chunk_that_fails_twice_is_named_and_the_rest_kept(exp, head, tmp_path):
    """A layer no network has: every selectivity chunk fails on its worker, twice; the line
    names each (checkpoint, analysis, chunk) and says how to rerun only those."""
    r = run_cli("report", exp, "--analyses", "selectivity", "--analysis-args",
                "--max-images 64 --device cpu --layers layer3.2 nope", "--address", head)
    line = _one_error_line(r, 1)
    assert "6 analysis task(s) failed twice (each named above; the first: selectivity of " \
        in line and "(chunk layers part " in line and "LayerError: no layer 'nope'" in line
    assert "the other results are kept; to redo only what failed, rerun: seltrain report " \
        in line
    assert r.stdout.count("trying it once more") == 6
    named = [ln for ln in r.stdout.splitlines() if ": failed twice (LayerError: " in ln]
    assert sorted(ln.split(" of ", 1)[1].split(": failed")[0].replace(str(exp), "")
                  for ln in named) == sorted(
        f"/trials/{t}/checkpoints/best.pt (chunk layers part {j} of 3)"
        for t in ("a0", "am1") for j in (1, 2, 3))


def test_two_drivers_on_one_experiment(exp, head):
    args = [sys.executable, "-m", "seltrain", "analyze", "dimensionality", str(exp), *SEL,
            "--corruptions", "gaussian_noise", "--address", head, "--force"]
    first = subprocess.Popen(args, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert "analysis task(s) on Ray" in first.stdout.readline()
        line = _one_error_line(subprocess.run(args, cwd=REPO, env=subprocess_env(),
                                              capture_output=True, text=True, timeout=120), 2)
        assert f"the analyses of the runs in {exp / 'trials'} is in use by pid {first.pid}" \
            in line and "wait for that driver to end" in line
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    assert _marker(exp / "trials" / "am1" / "analysis" / "dimensionality")["analysis"] \
        == "dimensionality"
