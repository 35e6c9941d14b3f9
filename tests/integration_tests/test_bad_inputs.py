"""Bad inputs and faults, one table: every row is a command, its exit code, the one
``seltrain:`` line it must print on stderr, the notes it may print besides, and the files that
must come out byte-identical (sha256 before and after). No row may print a traceback, and
every subprocess runs under a timeout, so a hang fails its row.

Rows run the CLI in-process (``seltrain.cli.main``) where nothing but the message is asserted;
the faults run real processes: SIGINT to a process group, SIGKILL mid-write, two runs racing
for one folder, a disk that fills up (a 3 MiB tmpfs mounted here, as root) and torn files.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest

from helpers import REPO, subprocess_env
from seltrain.cli import main

SYN = os.path.join(REPO, "configs", "synthetic.yaml")
# 4 steps an epoch at 8 px: a 2-epoch run takes a few seconds.
TINY = ["data.synthetic.train_size=192", "data.synthetic.test_size=64", "data.val_size=64",
        "data.synthetic.image_size=8", "train.epochs=2", "train.batch_size=32",
        "data.num_workers=0", "run.tensorboard=false", "run.progress=false"]
SHOW = ["config", "show", SYN]
WRITE = ["data", "write", "--config", SYN, "data.synthetic.train_size=200",
         "data.synthetic.image_size=8", "data.val_size=0", "--split", "train",
         "--num-workers", "1", "--no-progress"]
FAULT_TIMEOUT = 300  # seconds; generous: CI's 2 cores are shared


def train(run="r", *extra, out="{tmp}/runs"):
    return ["train", SYN, *TINY, f"run.out_dir={out}", f"run.name={run}", *extra]


@dataclass
class Row:
    id: str
    argv: list[str] = field(default_factory=list)  # "{tmp}", "{done}" are filled in
    code: int = 2
    line: str | None = None          # regex for the one "seltrain: error/interrupted:" line
    notes: tuple[str, ...] = ()      # regexes: every other stderr line must match one
    setup: Callable | None = None    # setup(tmp, done)
    keep: tuple[str, ...] = ()       # paths under tmp (files or folders) that must not change
    check: Callable | None = None    # check(tmp, done, stdout)
    fault: Callable | None = None    # a driver with real processes: fault(row, tmp) -> (code,
    #                                  stdout, stderr); None runs the CLI in-process
    subprocess: bool = False         # run the CLI in a subprocess (report: see its row)
    env: dict = field(default_factory=dict)  # environment variables ("{tmp}" filled in)


# --------------------------------------------------------------------------- helpers

def fill(text: str, tmp, done) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{done}", str(done))


def fill_all(argv: list[str], tmp, done) -> list[str]:
    return [fill(a, tmp, done) for a in argv]


def checksums(tmp, keep) -> dict:
    out = {}
    for rel in keep:
        path = os.path.join(tmp, rel)
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
        assert files, f"nothing to checksum at {path}"
        for f in files:
            with open(f, "rb") as fh:
                out[os.path.relpath(f, tmp)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def copy_done(tmp, done, name="r", out="runs"):
    dst = os.path.join(tmp, out, name)
    shutil.copytree(done, dst)
    return dst


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def plant_lock(folder, **info):
    os.makedirs(folder, exist_ok=True)
    base = {"host": socket.gethostname(), "pid": dead_pid(), "start": None,
            "started": time.time(), "job": None, "attempt": 0, "token": "planted"}
    base.update(info)
    with open(os.path.join(folder, ".seltrain.lock"), "w") as f:
        json.dump(base, f)


def epochs(path) -> list[int]:
    with open(path) as f:
        return [json.loads(ln)["epoch"] for ln in f if ln.strip()]


def write_text(rel, text):
    def setup(tmp, done):
        p = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w" if isinstance(text, str) else "wb") as f:
            f.write(text)
    return setup


def imagefolder(root, classes=("a", "b"), bad=None):
    """root/{train,val}/<class>/*.jpg of 16 px noise; ``bad``: name -> bytes in class a."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                    os.path.join(d, f"{i}.jpg"))
    for name, data in (bad or {}).items():
        with open(os.path.join(root, "train", classes[0], name), "wb") as f:
            f.write(data(root) if callable(data) else data)


def truncated_jpeg(root):
    with open(os.path.join(root, "train", "b", "0.jpg"), "rb") as f:
        data = f.read()
    return data[:len(data) // 2]


def r18_weights(classes=10, replace=None):
    """{tmp}/r18.pth: a torchvision resnet18's state_dict; ``replace``: {key: tensor}."""
    def setup(tmp, done):
        import torch
        import torchvision

        sd = torchvision.models.resnet18(num_classes=classes).state_dict()
        sd.update(replace or {})
        torch.save(sd, os.path.join(tmp, "r18.pth"))
    return setup


def no_target_folder(tmp, done, out):
    assert not os.path.exists(os.path.join(tmp, "t"))  # refused before anything is written


def conv_1x1(_tmp=None):
    import torch

    return torch.zeros(64, 64, 1, 1)


# `seltrain analyze` on a network seltrain did not train; its target folder in {tmp}.
ANY_MODEL = ["analyze", "selectivity", "--data", "synthetic", "--max-images", "16",
             "--target-dir", "{tmp}/t"]

IMAGEFOLDER = ["data.dataset=imagefolder", "data.root={tmp}/if", "data.image_size=16",
               "data.val_size=0", "train.batch_size=4"]


# --------------------------------------------------------------------------- fault drivers

def _sigint_as_a_terminal_gives_it() -> None:
    # A suite started in the background (`make test &`, nohup, some CI runners) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the Ctrl-C these
    # faults send would do nothing. Give the child the default disposition a terminal has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _popen(argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "seltrain", *argv], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_sigint_as_a_terminal_gives_it, **kw)


def _finish(proc, timeout=FAULT_TIMEOUT):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"hang: no exit within {timeout} s")
    return proc.returncode, out, err


def _wait_for(cond, proc, what, timeout=FAULT_TIMEOUT):
    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"ended (code {proc.returncode}) before {what}: {err[-2000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.01)


# ~40 MiB: seconds of writing, so the signal lands mid-write (it is sent once >1 MiB is in).
BIG_WRITE = ["data", "write", "--config", SYN, "data.synthetic.train_size=8000",
             "data.synthetic.image_size=32", "data.val_size=0", "--split", "train",
             "--num-workers", "1", "--no-progress", "--out", "{tmp}/big.beton"]


def _writing(tmp):
    """True once the writer has put real data into its temporary file."""
    return lambda: any(os.path.getsize(p) > 1 << 20
                       for p in glob.glob(os.path.join(tmp, ".big.beton.tmp-*")))


def sigint_data_write(row, tmp):
    """Ctrl-C (SIGINT to the process group) while `data write --force` replaces a file: it
    exits 130 within seconds, without hanging on its workers' queues, and the old file stays
    intact."""
    proc = _popen([fill(a, tmp, "") for a in BIG_WRITE] + ["--force"])
    _wait_for(_writing(tmp), proc, "the write under way")
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.time()
    code, out, err = _finish(proc, timeout=60)
    assert time.time() - t0 < 60
    return code, out, err


def sigterm_data_write(row, tmp):
    """`kill PID` (SIGTERM to the writer alone, not its group, as a scheduler's stop reaches
    a job's main process) mid-write: Ctrl-C's path, exit 143, the old file intact."""
    proc = _popen([fill(a, tmp, "") for a in BIG_WRITE] + ["--force"])
    _wait_for(_writing(tmp), proc, "the write under way")
    proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    code, out, err = _finish(proc, timeout=60)
    assert time.time() - t0 < 60
    return code, out, err


def sigkill_data_write(row, tmp):
    """SIGKILL mid-write leaves .big.beton.tmp-PID-*, the lock and FFCV's shared memory; the
    same command again frees all three (saying so) and writes the file."""
    argv = [fill(a, tmp, "") for a in BIG_WRITE]
    proc = _popen(argv)
    _wait_for(_writing(tmp), proc, "the write under way")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    left, = (p for p in glob.glob(os.path.join(tmp, f".big.beton.tmp-{proc.pid}-*"))
             if not p.endswith(".shm"))
    assert os.path.exists(os.path.join(tmp, ".big.beton.lock"))
    with open(f"{left}.shm") as f:
        shm = os.path.join("/dev/shm", f.read())
    assert os.path.exists(shm)
    result = _finish(_popen(argv))
    assert not os.path.exists(shm)
    return result


def sigint_before_checkpoint(row, tmp):
    """SIGINT while the first epoch runs: no checkpoint exists, so nothing to resume."""
    proc = _popen([fill(a, tmp, "") for a in train(
        "early", "data.synthetic.train_size=4096", "data.synthetic.image_size=16")])
    _wait_for(lambda: proc.stdout.readline().startswith("seltrain: rank 0"), proc,
              "the rank line")
    os.killpg(proc.pid, signal.SIGINT)
    return _finish(proc, timeout=60)


def sigint_after_checkpoint(row, tmp):
    """SIGINT after epoch 1's checkpoint: it is kept, and --resume finishes the run."""
    argv = [fill(a, tmp, "") for a in train("late", "train.epochs=3")]
    proc = _popen(argv)
    _wait_for(lambda: os.path.exists(os.path.join(tmp, "runs/late/checkpoints/last.pt")), proc,
              "the first checkpoint")
    os.killpg(proc.pid, signal.SIGINT)
    code, out, err = _finish(proc, timeout=60)
    resumed = _finish(_popen(argv + ["--resume"]))
    assert resumed[0] == 0, resumed[2][-3000:]
    return code, out, err


def sigterm_after_checkpoint(row, tmp):
    """SIGTERM (Slurm preemption, a spot reclaim) after epoch 1's checkpoint: the checkpoint
    is kept, the run folder's lock is released at once (a restart on another node is not made
    to wait for it to go stale), and --resume finishes the run."""
    argv = [fill(a, tmp, "") for a in train("term", "train.epochs=3")]
    proc = _popen(argv)
    _wait_for(lambda: os.path.exists(os.path.join(tmp, "runs/term/checkpoints/last.pt")), proc,
              "the first checkpoint")
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc, timeout=60)
    assert not os.path.exists(os.path.join(tmp, "runs/term/.seltrain.lock"))
    resumed = _finish(_popen(argv + ["--resume"]))
    assert resumed[0] == 0, resumed[2][-3000:]
    return code, out, err


def concurrent_runs(row, tmp):
    """A second run into a folder a live run holds (without the lock both would exit 0,
    interleaving metrics.jsonl): refused at once, naming the holder. The first run is paused
    (SIGSTOP) once it holds the folder, so the second always meets it alive, however slow the
    box."""
    argv = [fill(a, tmp, "") for a in train("shared", "train.epochs=3")]
    first = _popen(argv)
    _wait_for(lambda: os.path.exists(os.path.join(tmp, "runs/shared/.seltrain.lock")), first,
              "the first run's lock")
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = _finish(_popen(argv))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    code, _, err = _finish(first)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert f"in use by pid {first.pid} " in second[2], second[2]
    return second


def concurrent_analyses(row, tmp):
    """Two analyses of two runs into one --out at once (unlocked, they would mix their files,
    the JSON from one, the CSVs from the other): the second is refused at once, naming the first,
    which is paused (SIGSTOP) once it holds the folder's lock; the first then finishes alone."""
    def analyse(run):
        return _popen(["analyze", "selectivity", os.path.join(tmp, "runs", run), "--max-images",
                       "16", "--out", os.path.join(tmp, "out")])

    first = analyse("r1")
    _wait_for(lambda: os.path.exists(os.path.join(tmp, ".out.lock")), first,
              "the first analysis' lock")
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = _finish(analyse("r2"))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    code, _, err = _finish(first)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert f"in use by pid {first.pid} " in second[2], second[2]
    return second


def one_analysis_in_out(run):
    def check(tmp, done, out):
        ckpt = os.path.join(tmp, "runs", run, "checkpoints", "best.pt")
        with open(os.path.join(tmp, "out", "selectivity.json")) as f:
            assert json.load(f)["checkpoint"] == ckpt
        with open(os.path.join(tmp, "out", ".seltrain-analysis.json")) as f:
            assert json.load(f)["checkpoint"] == ckpt
        assert not [e for e in os.listdir(tmp) if e.startswith(".out.")]
    return check


def nothing_left_beside(name):
    """No temporary folder and no lock of ``name`` left in its parent."""
    def check(tmp, done, out):
        assert not [e for e in os.listdir(tmp) if e.startswith(f".{name}.")], os.listdir(tmp)
    return check


def earlier_ablation(tmp, done):
    """runs/r, and out/ holding (as its marker says) an earlier ablation of its best.pt."""
    run = copy_done(tmp, done)
    write_text("out/summary.json", '{"earlier": true}')(tmp, done)
    write_text("out/.seltrain-analysis.json", json.dumps(
        {"analysis": "ablation", "checkpoint": os.path.join(run, "checkpoints", "best.pt")}))(
        tmp, done)


def sigint_analysis(row, tmp):
    """Ctrl-C while an analysis writes into an --out that holds its earlier results: the
    earlier results stay whole (the new ones go to a temporary folder, removed)."""
    proc = _popen(["analyze", "ablation", os.path.join(tmp, "runs", "r"), "--max-images", "64",
                   "--out", os.path.join(tmp, "out")])
    _wait_for(lambda: glob.glob(os.path.join(tmp, ".out.tmp-*")), proc, "the analysis under way")
    os.killpg(proc.pid, signal.SIGINT)
    return _finish(proc, timeout=60)


@pytest.fixture
def tmpfs(tmp_path_factory):
    """A 3 MiB tmpfs of our own: a real full disk."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    d = str(tmp_path_factory.mktemp("tmpfs"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", d],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", d], check=True)


def disk_full_train(row, tmp):
    """last.pt (2.2 MB) fits in the 3 MiB disk, its copy to best.pt does not: exit 3 with the
    folder named, last.pt intact. Moved to a disk with room, --resume restores best.pt from
    last.pt (saying so) and finishes."""
    d = row.tmpfs
    code, out, err = _finish(_popen(train("full", "train.epochs=3", out=d)))
    run = os.path.join(d, "full")
    import torch

    assert torch.load(os.path.join(run, "checkpoints/last.pt"), weights_only=True)["epoch"] == 0
    assert not os.path.exists(os.path.join(run, "checkpoints/best.pt"))  # never best w/o last
    assert not glob.glob(os.path.join(run, "checkpoints", ".*.tmp-*"))
    moved = os.path.join(tmp, "moved")
    shutil.copytree(d, moved)
    shutil.rmtree(run)
    r = _finish(_popen(train("full", "train.epochs=3", "--resume", out=moved)))
    assert r[0] == 0, r[2][-3000:]
    assert re.search(r"restored .*best.pt from last.pt", r[2]), r[2]
    assert epochs(os.path.join(moved, "full/metrics.jsonl")) == [0, 1, 2]
    return code, out, err


def disk_full_write(row, tmp):
    code, out, err = _finish(_popen(WRITE + ["--out", os.path.join(row.tmpfs, "x.beton")]))
    assert os.listdir(row.tmpfs) == []  # no partial file, no lock, no sidecar
    return code, out, err


# --------------------------------------------------------------------------- checks

def metrics_equal_done(tmp, done, out):
    with open(os.path.join(tmp, "runs/r/metrics.jsonl"), "rb") as a, \
            open(os.path.join(done, "metrics.jsonl"), "rb") as b:
        assert a.read() == b.read()


def no_lock_and_two_epochs(tmp, done, out):
    assert not os.path.exists(os.path.join(tmp, "runs/r/.seltrain.lock"))
    assert epochs(os.path.join(tmp, "runs/r/metrics.jsonl")) == [0, 1]


def nothing_left_by_the_write(tmp, done, out):
    assert not glob.glob(os.path.join(tmp, ".*.tmp-*"))
    assert not os.path.exists(os.path.join(tmp, ".big.beton.lock"))
    assert not os.path.exists(os.path.join(tmp, "big.beton.json"))


def big_beton_written(tmp, done, out):
    assert os.path.exists(os.path.join(tmp, "big.beton.json"))
    assert not glob.glob(os.path.join(tmp, ".*.tmp-*"))
    assert not os.path.exists(os.path.join(tmp, ".big.beton.lock"))


def epochs_of(run, want):
    def check(tmp, done, out):
        assert epochs(os.path.join(tmp, run, "metrics.jsonl")) == want
    return check


def no_checkpoint_at(run):
    def check(tmp, done, out):
        assert not os.path.exists(os.path.join(tmp, run, "checkpoints/last.pt"))
    return check


def no_checkpoint_temporaries(tmp, done, out):
    assert not glob.glob(os.path.join(tmp, "runs/r/checkpoints/.*.tmp-*"))


def both_bad_images_listed(tmp, done, out):
    assert sorted(re.findall(r"/if/train/a/(bad|trunc)\.jpg: ", out)) == ["bad", "trunc"], out


def tear_metrics(keep_lines=None, cut=True):
    def setup(tmp, done):
        run = copy_done(tmp, done)
        p = os.path.join(run, "metrics.jsonl")
        with open(p) as f:
            lines = f.read().splitlines(keepends=True)
        if keep_lines is None:
            os.remove(p)
            return
        body = "".join(lines[:keep_lines])
        if cut:  # the next line cut off mid-write
            body += lines[keep_lines][: len(lines[keep_lines]) // 2]
        with open(p, "w") as f:
            f.write(body)
    return setup


def setup_report(tmp, done):
    trial = copy_done(tmp, done, "alpha0_seed0_t1", "exp/trials")
    p = os.path.join(trial, "metrics.jsonl")
    with open(p) as f:
        text = f.read()
    with open(p, "w") as f:
        f.write(text[: len(text) - 40])  # the last record torn


def report_dropped_torn_line(tmp, done, out):
    import csv

    with open(os.path.join(tmp, "exp/results.csv")) as f:
        (row,) = list(csv.DictReader(f))
    assert row["epochs_run"] == "1" and row["complete"] == "True"


# --------------------------------------------------------------------------- more setups

PLANTED = "planted_by_the_pickle"  # the file a planted CIFAR batch creates when unpickled


class _CreatesAFile:
    """Unpickled, this calls open(path, "w"): proof that a pickle runs what it names."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def plant_cifar(tmp, done):
    import pickle

    d = os.path.join(tmp, "evil", "cifar-10-batches-py")
    os.makedirs(d)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump({b"data": _CreatesAFile(os.path.join(tmp, PLANTED)), b"labels": [0]}, f,
                        protocol=2)


def nothing_ran(tmp, done, out):
    """No file was created; and the planted batch does create one when unpickled plainly, so
    this row would fail if seltrain ran it."""
    import pickle

    planted = os.path.join(tmp, PLANTED)
    assert not os.path.exists(planted)
    with open(os.path.join(tmp, "evil", "cifar-10-batches-py", "data_batch_1"), "rb") as f:
        pickle.load(f, encoding="bytes")
    assert os.path.exists(planted)


def alias_bomb(levels):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines + [f"train: *a{levels - 1}"]) + "\n"


def experiment(trials: dict):
    """exp/trials/<name>/ copies of the done run; ``trials``: name -> edit(run folder)."""
    def setup(tmp, done):
        for name, edit in trials.items():
            run = copy_done(tmp, done, name, "exp/trials")
            if edit:
                edit(run)
    return setup


def set_metric(key, value, epoch=0):
    def edit(run):
        p = os.path.join(run, "metrics.jsonl")
        with open(p) as f:
            recs = [json.loads(ln) for ln in f if ln.strip()]
        recs[epoch][key] = value
        with open(p, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
    return edit


def no_checkpoints(run):
    shutil.rmtree(os.path.join(run, "checkpoints"))


def lists_the_skipped_trial(tmp, done, out):
    assert re.search(r"selectivity: skipped .*/exp/trials/b: no checkpoints/best.pt or "
                     r"checkpoints/last.pt", out), out
    assert "analysed 1 of 2 run folders" in out and out.rstrip().endswith(": b"), out
    assert os.path.isfile(os.path.join(tmp, "exp/trials/a/analysis/selectivity/selectivity.json"))


def tune(*extra):
    return ["tune", "--search", "{tmp}/s.yaml", *extra]


def search_recipe(text, storage="exp"):
    """{tmp}/s.yaml: a search of the synthetic recipe into {tmp}/``storage``, plus ``text``."""
    def setup(tmp, done):
        write_text("s.yaml", f"base: {SYN}\nstorage: {os.path.join(tmp, storage)}\n" + text)(
            tmp, done)
    return setup


def damage(name, how):
    """A copy of the done run whose checkpoints/``name`` has one weight damaged in place:
    ``how`` "nan" writes NaN over 4 bytes, "flip" flips one bit (the file still unpickles)."""
    def setup(tmp, done):
        import torch

        run = copy_done(tmp, done)
        path = os.path.join(run, "checkpoints", name)
        weights = torch.load(path, weights_only=True)["model"]
        biggest = max((t for t in weights.values() if t.is_floating_point()), key=torch.numel)
        with open(path, "rb") as f:
            data = f.read()
        at = data.find(biggest.contiguous().numpy().tobytes()[:64])
        assert at > 0
        new = b"\xff\xff\xff\xff" if how == "nan" else bytes([data[at + 8] ^ 0x01])
        with open(path, "r+b") as f:
            f.seek(at + 8)
            f.write(new)
    return setup


def old_checkpoint_without_digest(tmp, done):
    import torch

    run = copy_done(tmp, done)
    path = os.path.join(run, "checkpoints", "best.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["model_sha256"]
    torch.save(ckpt, path)


def replaced_by_this_analysis(tmp, done, out):
    """--force: the folder holds this analysis' files and nothing of what was there."""
    names = sorted(os.listdir(os.path.join(tmp, "out")))
    assert "units_other.csv" not in names and "selectivity.json" in names, names
    assert {n for n in names if n.startswith("units_")} and ".seltrain-analysis.json" in names
    best = os.path.join(done, "checkpoints", "best.pt")
    with open(os.path.join(tmp, "out", "selectivity.json")) as f:
        assert json.load(f)["checkpoint"] == best
    with open(os.path.join(tmp, "out", ".seltrain-analysis.json")) as f:
        marker = json.load(f)
    assert {k: marker[k] for k in ("analysis", "checkpoint")} == \
        {"analysis": "selectivity", "checkpoint": best}
    assert 0 <= marker["headline"]["mean_si"] <= 1  # what `seltrain report` lists
    assert not [e for e in os.listdir(tmp) if e.startswith(".out.")]  # no temporary, no lock


def other_results(marker: bool):
    def setup(tmp, done):
        write_text("out/units_other.csv", "unit,si\n0,0.5\n")(tmp, done)
        if marker:
            write_text("out/.seltrain-analysis.json", json.dumps(
                {"analysis": "selectivity", "checkpoint": "/elsewhere/best.pt"}))(tmp, done)
    return setup


def write_betons(label=None):
    """{tmp}/train.beton and test.beton of the TINY synthetic data; ``label``: written over
    sample 3's label in the train file (its metadata table, as FFCV stores an IntField)."""
    def setup(tmp, done):
        import numpy as np

        for split in ("train", "test"):
            data = [a for a in TINY if a.startswith("data.")] + ["data.val_size=0"]
            assert main(["data", "write", "--config", SYN, *data, "--split", split,
                         "--num-workers", "1", "--no-progress", "--out",
                         f"{tmp}/{split}.beton"]) == 0
        if label is not None:
            from ffcv.reader import Reader
            from ffcv.types import HeaderType

            path = f"{tmp}/train.beton"
            r = Reader(path)
            field = r.metadata.dtype.names[r.field_names.index("label")]
            at = HeaderType.itemsize + r.field_descriptors.nbytes \
                + 3 * r.metadata.dtype.itemsize + r.metadata.dtype.fields[field][1]
            with open(path, "r+b") as f:
                f.seek(at)
                f.write(np.int64(label).tobytes())
    return setup


FFCV = ["data.loader=ffcv", "data.ffcv.train={tmp}/train.beton", "data.ffcv.test={tmp}/test.beton",
        "data.val_size=0"]


def corrupted(labels):
    """{tmp}/c: a CIFAR-10-C-style set for the done model (8 px): gaussian_noise.npy with
    5 x 16 images and ``labels`` as labels.npy."""
    def setup(tmp, done):
        import numpy as np

        d = os.path.join(tmp, "c")
        os.makedirs(d)
        rng = np.random.default_rng(0)
        np.save(os.path.join(d, "gaussian_noise.npy"),
                rng.integers(0, 255, (80, 8, 8, 3), dtype=np.uint8))
        np.save(os.path.join(d, "labels.npy"), np.asarray(labels))
    return setup


CORRUPTED = ["analyze", "robustness", "{done}", "--corrupted-root", "{tmp}/c", "--corruptions",
             "gaussian_noise", "--severities", "1", "--eps", "0", "--attack", "fgsm",
             "--max-images", "16", "--out", "{tmp}/rob"]


def symlink_loop(tmp, done):
    root = os.path.join(tmp, "if")
    imagefolder(root)
    os.symlink("..", os.path.join(root, "train", "a", "loop"))        # a loop to train/
    os.symlink("../b", os.path.join(root, "train", "a", "b_again"))   # another class
    os.symlink("0.jpg", os.path.join(root, "train", "a", "twice.jpg"))  # the same file


def counts_sixteen(tmp, done, out):
    assert "all 16 images of imagefolder decode" in out, out


def edited_metrics(tmp, done):
    run = copy_done(tmp, done)
    set_metric("val_acc", 0.999)(run)


def replaced_file_kept(tmp, done, out):
    metrics_equal_done(tmp, done, out)
    (kept,) = glob.glob(os.path.join(tmp, "runs/r/metrics.jsonl.replaced-*"))
    with open(kept) as f:
        assert json.loads(f.readline())["val_acc"] == 0.999


def root_resolved(tmp, done, out):
    assert f"root: {os.path.abspath('some/data')}\n" in out, out


# --------------------------------------------------------------------------- the table

ROWS = [
    # ---- Silently wrong: refused at config time, with the key and its range
    Row("grad_clip_negative", SHOW + ["train.grad_clip=-1"], 2,
        r"train.grad_clip must be > 0 or null .*got -1.0 \(override 'train.grad_clip=-1'\)"),
    Row("max_steps_negative", SHOW + ["train.max_steps_per_epoch=-1"], 2,
        r"train.max_steps_per_epoch must be >= 1 or null"),
    Row("lr_nan", SHOW + ["train.lr=nan"], 2, r"train.lr must be a finite number, got 'nan'"),
    Row("alpha_nan", SHOW + ["selectivity.alpha=nan"], 2,
        r"selectivity.alpha must be a finite number"),
    Row("alpha_inf", SHOW + ["selectivity.alpha=inf"], 2,
        r"selectivity.alpha must be a finite number, got 'inf'"),
    Row("alpha_schedule_out_of_order", SHOW + [
        "selectivity.alpha_schedule.kind=ramp", "selectivity.alpha_schedule.start_epoch=30",
        "selectivity.alpha_schedule.end_epoch=10", "train.epochs=40"], 2,
        r"selectivity.alpha_schedule: epochs out of order, start_epoch 30 is not before "
        r"end_epoch 10; give start_epoch < end_epoch"),
    Row("alpha_schedule_past_the_run", SHOW + [
        "selectivity.alpha_schedule.kind=step", "selectivity.alpha_schedule.start_epoch=30",
        "train.epochs=10"], 2,
        r"selectivity.alpha_schedule.start_epoch=30 is past the run's last epoch \(9; .*give a "
        r"start_epoch below train.epochs=10"),
    Row("alpha_schedule_start_negative", SHOW + ["selectivity.alpha_schedule.start_epoch=-1"],
        2, r"selectivity.alpha_schedule.start_epoch must be >= 0, got -1"),
    Row("alpha_window_end_not_after_start", SHOW + [
        "selectivity.alpha_schedule.kind=window", "selectivity.alpha_schedule.start_epoch=5",
        "selectivity.alpha_schedule.end_epoch=5", "train.epochs=10"], 2,
        r"selectivity.alpha_schedule: epochs out of order, start_epoch 5 is not before "
        r"end_epoch 5; give start_epoch < end_epoch"),
    Row("keep_epochs_past_the_run", SHOW + ["run.keep_epochs=[0,1,10]", "train.epochs=10"], 2,
        r"run.keep_epochs must be increasing epochs, each below train.epochs=10 \(epochs "
        r"count from 0\), got \[0, 1, 10\]"),
    Row("dropout_on_a_resnet", train("drop", "model.dropout=0.5"), 2,
        r"model.arch=resnet20: dropout applies to vgg16, vgg16_bn, cnn7, not resnet20; leave "
        r"model.dropout out \(null\)"),
    Row("stem_on_resnet20", train("stem", "model.stem=imagenet"), 2,
        r"model.arch=resnet20: the stem applies to resnet18, resnet50, not resnet20; leave "
        r"model.stem at auto"),
    Row("stem_unknown", SHOW + ["model.stem=tiny"], 2,
        r"unknown value 'tiny' for model.stem .*choose one of: auto, cifar, nomaxpool, imagenet"),
    Row("dropout_one", SHOW + ["model.dropout=1"], 2,
        r"model.dropout must be in \[0, 1\) or null \(the architecture's own\), got 1.0"),
    Row("empty_yaml", ["config", "show", "{tmp}/empty.yaml"], 2, r"empty.yaml is empty",
        setup=write_text("empty.yaml", "# nothing here\n")),
    Row("empty_section_override", SHOW + ["data="], 2,
        r"section 'data' is empty \(override 'data='\)"),
    Row("run_name_parent", SHOW + ["run.name=../x"], 2,
        r"run.name must be a plain folder name inside run.out_dir"),
    Row("run_name_absolute", SHOW + ["run.name=/tmp/elsewhere"], 2,
        r"run.name must be a plain folder name"),
    Row("imagefolder_one_class", train("one", *IMAGEFOLDER), 3,
        r"imagefolder: .*has one class folder \(a\); .*at least 2 classes",
        setup=lambda tmp, done: imagefolder(os.path.join(tmp, "if"), classes=("a",))),
    Row("analyze_max_images_negative",
        ["analyze", "selectivity", "{done}", "--max-images", "-5"], 2,
        r"--max-images -5: give a whole number >= 0 \(0: all\)"),
    Row("analyze_checkpoint_not_kept",
        ["analyze", "selectivity", "{done}", "--checkpoint", "epoch_001"], 3,
        r"/r has no checkpoints/epoch_001.pt \(kept epochs: none; run.keep_epochs names "
        r"the epochs a run keeps\)"),
    Row("analyze_checkpoint_unknown",
        ["analyze", "selectivity", "{done}", "--checkpoint", "first"], 2,
        r"--checkpoint first: give best, last, kept \(every kept epoch\), or one kept epoch "
        r"\(run.keep_epochs\) as epoch_003 or 3"),
    # ---- The 15 tracebacks
    Row("binary_recipe", ["config", "show", "{tmp}/noise.yaml"], 2,
        r"noise.yaml is not a text YAML file", setup=write_text("noise.yaml", bytes(range(256)))),
    Row("checkpoint_as_recipe", ["train", "{done}/checkpoints/last.pt"], 2,
        r"last.pt is not a text YAML file"),
    Row("eval_batch_size_zero", SHOW + ["train.eval_batch_size=0"], 2,
        r"train.eval_batch_size must be >= 1, got 0"),
    Row("limit_train_negative", SHOW + ["data.limit_train=-5"], 2,
        r"data.limit_train must be >= 1 or null, got -5"),
    Row("label_smoothing_two", SHOW + ["train.label_smoothing=2"], 2,
        r"train.label_smoothing must be in \[0, 1\), got 2.0"),
    Row("momentum_negative", SHOW + ["train.momentum=-1"], 2,
        r"train.momentum must be in \[0, 1\), got -1.0"),
    Row("jpg_not_an_image", train("badjpg", *IMAGEFOLDER), 3,
        r"cannot decode .*/if/train/a/bad.jpg \(UnidentifiedImageError.*seltrain data check",
        setup=lambda tmp, done: imagefolder(os.path.join(tmp, "if"),
                                            bad={"bad.jpg": b"not a jpeg at all"})),
    Row("truncated_jpeg_in_worker", train("trunc", *IMAGEFOLDER, "data.num_workers=1"), 3,
        r"cannot decode .*/if/train/a/trunc.jpg .*seltrain data check",
        setup=lambda tmp, done: imagefolder(os.path.join(tmp, "if"),
                                            bad={"trunc.jpg": truncated_jpeg})),
    Row("out_dir_under_a_file", train("r", out="{tmp}/afile/runs"), 2,
        r"cannot create the run folder .*afile is a file, not a folder",
        setup=write_text("afile", "x"), keep=("afile",)),
    Row("write_out_is_a_folder", WRITE + ["--out", "{tmp}"], 3, r"--out .* is a folder"),
    Row("write_out_under_a_file", WRITE + ["--out", "{tmp}/afile/x.beton"], 3,
        r"afile is a file, not a folder", setup=write_text("afile", "x"), keep=("afile",)),
    Row("analyze_out_under_a_file",
        ["analyze", "selectivity", "{done}", "--max-images", "16", "--out", "{tmp}/afile/x"], 2,
        r"cannot write the selectivity results to .*afile is a file, not a folder",
        setup=write_text("afile", "x"), keep=("afile",)),
    Row("torn_metrics_resume", train("r", "--resume"), 0, None,
        notes=(r"rebuilt .*metrics.jsonl from checkpoints/last.pt \(epochs 2 were missing; "
               r"a torn last line was dropped\)",),
        setup=tear_metrics(keep_lines=1), keep=("runs/r/checkpoints",), check=metrics_equal_done),
    # A subprocess: report_experiment binds sys.stdout when it is imported, and pytest swaps it.
    Row("torn_metrics_report", ["report", "{tmp}/exp"], 0, None, setup=setup_report,
        keep=("exp/trials",), check=report_dropped_torn_line, subprocess=True),
    Row("disk_full_train", [], 3,
        r"no space left on .*/full/checkpoints while writing best.pt; the previous "
        r"checkpoints are kept", fault=disk_full_train),
    # ---- Data loss and hangs
    Row("data_write_sigint", [], 130,
        r"interrupted: stopped writing .*big.beton; its temporary file was removed and the "
        r"existing file is unchanged", setup=write_text("big.beton", "an older file"),
        keep=("big.beton",), fault=sigint_data_write,
        check=nothing_left_by_the_write),
    Row("best_only_without_resume", train("r", "selectivity.alpha=-1"), 2,
        r"already holds checkpoints/best.pt, metrics.jsonl, summary.json from an earlier run",
        setup=lambda tmp, done: os.remove(os.path.join(copy_done(tmp, done),
                                                       "checkpoints/last.pt")),
        keep=("runs/r",)),
    Row("best_only_with_resume", train("r", "--resume"), 3,
        r"cannot resume .*holds checkpoints/best.pt.* but no checkpoints/last.pt",
        setup=lambda tmp, done: os.remove(os.path.join(copy_done(tmp, done),
                                                       "checkpoints/last.pt")),
        keep=("runs/r",)),
    Row("metrics_only", train("r"), 2, r"already holds metrics.jsonl from an earlier run",
        setup=lambda tmp, done: (os.makedirs(os.path.join(tmp, "runs/r")), shutil.copy(
            os.path.join(done, "metrics.jsonl"), os.path.join(tmp, "runs/r"))),
        keep=("runs/r",)),
    Row("deepspeed_shard_only", train("r"), 2,
        r"already holds checkpoints/deepspeed/ \(ZeRO shards\)",
        setup=write_text("runs/r/checkpoints/deepspeed/last-step8/mp_rank_00_model_states.pt",
                         b"shard"), keep=("runs/r",)),
    Row("last_without_resume", train("r"), 2, r"already holds .*last.pt; pass --resume",
        setup=lambda tmp, done: copy_done(tmp, done), keep=("runs/r",)),
    Row("concurrent_runs", [], 2,
        r"run folder .*/runs/shared is in use by pid \d+ on .*lock file .*\.seltrain\.lock",
        fault=concurrent_runs,
        check=epochs_of("runs/shared", [0, 1, 2])),
    Row("live_lock_this_host", train("r"), 2,
        rf"run folder .*/runs/r is in use by pid {os.getpid()} on "
        rf"{re.escape(socket.gethostname())}",
        setup=lambda tmp, done: plant_lock(os.path.join(tmp, "runs/r"), pid=os.getpid(),
                                           start=_start(os.getpid())),
        keep=("runs/r",)),
    Row("live_lock_other_host", train("r"), 2, r"in use by pid 4242 on node-b",
        setup=lambda tmp, done: plant_lock(os.path.join(tmp, "runs/r"), host="node-b", pid=4242),
        keep=("runs/r",)),
    Row("stale_lock_dead_pid", train("r"), 0, None,
        notes=(r"removed the stale lock .*\.seltrain\.lock \(pid \d+ on .*no longer running\)",),
        setup=lambda tmp, done: plant_lock(os.path.join(tmp, "runs/r")),
        check=no_lock_and_two_epochs),
    Row("stale_lock_other_host", train("r"), 0, None,
        notes=(r"removed the stale lock .*node-b, no heartbeat for \d+ s",),
        setup=lambda tmp, done: _old(plant_lock(os.path.join(tmp, "runs/r"), host="node-b"),
                                     os.path.join(tmp, "runs/r/.seltrain.lock")),
        check=no_lock_and_two_epochs),
    Row("write_out_exists", WRITE + ["--out", "{tmp}/a.beton"], 3,
        r"a.beton already exists; pass --force to replace it",
        setup=write_text("a.beton", "precious"), keep=("a.beton",)),
    # ---- Silently wrong (the rest)
    Row("deleted_metrics_resume", train("r", "--resume"), 0, None,
        notes=(r"rebuilt .*metrics.jsonl from checkpoints/last.pt \(epochs 1-2 were missing\)",),
        setup=tear_metrics(), keep=("runs/r/checkpoints",), check=metrics_equal_done),
    Row("short_metrics_resume", train("r", "--resume"), 0, None,
        notes=(r"rebuilt .*\(epochs 2 were missing\)",),
        setup=tear_metrics(keep_lines=1, cut=False), keep=("runs/r/checkpoints",),
        check=metrics_equal_done),
    # ---- Smaller
    Row("control_character_yaml", ["config", "show", "{tmp}/ctl.yaml"], 2,
        r"ctl.yaml is not valid YAML: .*special characters are not allowed",
        setup=write_text("ctl.yaml", "train:\n  lr: \x01\n")),
    Row("override_into_a_value", SHOW + ["train.lr.x=1"], 2,
        r"train.lr must be float, got \{'x': 1\} \(override 'train.lr.x=1'\)"),
    Row("bad_grid_value", ["tune", "--search", "{tmp}/s.yaml", "--dry-run"], 2,
        r"train.lr must be > 0, got -1.0 \(space.train.lr in .*s.yaml\)",
        setup=write_text("s.yaml", f"base: {SYN}\nspace: {{train.lr: {{grid: [-1.0, 0.1]}}}}\n")),
    Row("stale_checkpoint_temporary", train("r", "--resume"), 0, None,
        notes=(r"removed \.last\.pt\.tmp-\d+-torn, left in .*checkpoints by an interrupted "
               r"write",),
        setup=lambda tmp, done: write_text(
            f"runs/r/checkpoints/.last.pt.tmp-{dead_pid()}-torn", b"PK\x03\x04 torn")(
            tmp, copy_done(tmp, done)),
        keep=("runs/r/checkpoints/last.pt", "runs/r/checkpoints/best.pt",
              "runs/r/metrics.jsonl"),
        check=no_checkpoint_temporaries),
    Row("stale_beton_temporary_sigkill", [], 0, None,
        notes=(r"removed the stale lock .*\.big\.beton\.lock \(pid \d+ on .*no longer running\)",
               r"removed (\.big\.beton\.tmp-\d+-\w+), \1\.shm, left in .* by an "
               r"interrupted write"),
        fault=sigkill_data_write,
        check=big_beton_written),
    Row("sigint_before_checkpoint", [], 130,
        r"interrupted: stopped before the first checkpoint was written, so there is nothing "
        r"to resume", fault=sigint_before_checkpoint,
        check=no_checkpoint_at("runs/early")),
    Row("sigint_after_checkpoint", [], 130,
        r"interrupted: the last checkpoint is kept \(.*/runs/late/checkpoints/last.pt\); "
        r"continue with the same command plus --resume", fault=sigint_after_checkpoint,
        check=epochs_of("runs/late", [0, 1, 2])),
    # ---- SIGTERM, as schedulers stop jobs, takes Ctrl-C's path (exit 128 + 15)
    Row("sigterm_after_checkpoint", [], 143,
        r"terminated \(SIGTERM\): the last checkpoint is kept \(.*/runs/term/checkpoints/"
        r"last.pt\); continue with the same command plus --resume",
        fault=sigterm_after_checkpoint, check=epochs_of("runs/term", [0, 1, 2])),
    Row("sigterm_data_write", [], 143,
        r"terminated \(SIGTERM\): stopped writing .*big.beton; its temporary file was removed "
        r"and the existing file is unchanged", setup=write_text("big.beton", "an older file"),
        keep=("big.beton",), fault=sigterm_data_write, check=nothing_left_by_the_write),
    Row("disk_full_data_write", [], 3,
        r"no space left on .* while writing x.beton; the partial file was removed",
        fault=disk_full_write),
    # ---- More of the same kind, tried while at it
    Row("corrupt_last_resume", train("r", "--resume"), 3,
        r"checkpoint .*last.pt is corrupt or unreadable",
        setup=lambda tmp, done: write_text("runs/r/checkpoints/last.pt", b"garbage")(
            tmp, copy_done(tmp, done)), keep=("runs/r",)),
    Row("data_check_lists_every_bad_image",
        ["data", "check", "--dataset", "imagefolder", "--root", "{tmp}/if", "--no-progress"], 3,
        r"2 of 18 images of imagefolder cannot be decoded \(listed on stdout\)",
        setup=lambda tmp, done: imagefolder(os.path.join(tmp, "if"), bad={
            "bad.jpg": b"no", "trunc.jpg": truncated_jpeg}),
        check=both_bad_images_listed),
    Row("recipe_is_a_folder", ["config", "show", "{tmp}"], 2, r"is a folder, not a recipe file"),
    Row("analyze_bad_device", ["analyze", "selectivity", "{done}", "--device", "gpu0"], 2,
        r"--device gpu0: use auto, cpu, cuda or cuda:N"),
    Row("analyze_missing_path", ["analyze", "selectivity", "{tmp}/nothing"], 3,
        r"no checkpoint, run folder or experiment at"),
    Row("analyze_val_of_a_run_without_one",
        ["analyze", "selectivity", "{tmp}/runs/noval", "--split", "val", "--device", "cpu"], 2,
        r"this run has no validation split \(data.val_size=0\); use --split test",
        setup=lambda tmp, done: main(fill_all(train("noval", "data.val_size=0",
                                                    "train.epochs=1"), tmp, done)),
        keep=("runs/noval",)),
    Row("ablation_rank_split_of_a_run_without_val",
        ["analyze", "ablation", "{tmp}/runs/noval", "--rank-split", "val", "--device", "cpu"],
        2, r"--rank-split val: this run has no validation split \(data.val_size=0\); leave "
        r"--rank-split out to use the test split for both",
        setup=lambda tmp, done: main(fill_all(train("noval", "data.val_size=0",
                                                    "train.epochs=1"), tmp, done)),
        keep=("runs/noval",)),
    Row("rotation_of_a_block_feeding_a_residual_addition",
        ["analyze", "rotation", "{done}", "--layers", "layer1.0", "--device", "cpu"], 2,
        r"cannot rotate 'layer1.0': its output feeds 2 operations \('layer1.1.conv1' "
        r"\(Conv2d\), 'layer1.1.shortcut' \(Identity\); a residual addition\?\)"),
    Row("pwcca_without_a_reference", ["analyze", "pwcca", "{done}", "--device", "cpu"], 2,
        r"pwcca needs --reference PATH: the network to compare with"),
    Row("report_missing_folder", ["report", "{tmp}/nothing"], 2,
        r"experiment folder not found"),
    Row("analyze_unknown_format", ["analyze", "selectivity", "{done}", "--format", "png,jpg"], 2,
        r"--format png,jpg: unknown format 'jpg'; choose from png, svg, pdf"),
    Row("report_unknown_format", ["report", "{tmp}/nothing", "--format", "eps"], 2,
        r"--format eps: unknown format 'eps'; choose from png, svg, pdf"),
    Row("write_negative_workers", WRITE + ["--num-workers", "-1", "--out", "{tmp}/b.beton"],
        2, r"--num-workers must be >= 0"),
    Row("unknown_flag", ["train", SYN, "--bogus"], 2,
        r"unrecognized arguments: --bogus \(see 'seltrain --help'\)"),
    # ---- Nothing runs that should not, nothing looks finished that is not
    # Security
    Row("cifar_planted_pickle",
        ["data", "check", "--dataset", "cifar10", "--root", "{tmp}/evil", "--no-progress"], 3,
        r"data_batch_1 is not a plain-data CIFAR batch: it names io.open, which seltrain "
        r"does not call \(a pickle can run code; nothing from it was run\)",
        setup=plant_cifar, keep=("evil",), check=nothing_ran),
    Row("cifar_planted_pickle_train", train("evil", "data.dataset=cifar10",
                                             "data.root={tmp}/evil"), 3,
        r"data_batch_1 is not a plain-data CIFAR batch: it names io.open",
        setup=plant_cifar, keep=("evil",), check=nothing_ran),
    Row("yaml_alias_bomb", ["config", "show", "{tmp}/bomb.yaml"], 2,
        r"bomb.yaml holds more than 10000 values once its aliases are expanded",
        setup=write_text("bomb.yaml", alias_bomb(9))),
    Row("yaml_alias_bomb_one_more_level", ["config", "show", "{tmp}/bomb.yaml"], 2,
        r"bomb.yaml holds more than 10000 values once its aliases are expanded",
        setup=write_text("bomb.yaml", alias_bomb(10))),
    Row("long_value_echo_is_cut", ["config", "show", "{tmp}/long.yaml"], 2,
        r"train.lr must be float, got \[0, 1, 2, .{0,80}\.\.\. \(cut\) \(in .*long.yaml\)$",
        setup=write_text("long.yaml", f"train:\n  lr: {list(range(5000))}\n")),
    Row("long_override_echo_is_cut", SHOW + ["train.lr=" + "x" * 100_000], 2,
        r"train.lr must be float, got 'x{70,80}\.\.\. \(cut\) \(override 'train.lr=x+\.\.\.'\)$"),
    # Looks finished but is not (Ctrl-C of a search, and a second live search, need a real
    # Ray: test_bad_inputs_tune.py)
    Row("analyze_out_foreign_files",
        ["analyze", "selectivity", "{done}", "--max-images", "16", "--out", "{tmp}/out"], 2,
        r"--out .*/out already holds 1 other file\(s\) \(units_other.csv\); pass --force to "
        r"replace that folder whole, or choose another --out",
        setup=other_results(marker=False), keep=("out",)),
    Row("analyze_out_other_runs_results",
        ["analyze", "selectivity", "{done}", "--max-images", "16", "--out", "{tmp}/out"], 2,
        r"--out .*/out already holds the selectivity results of /elsewhere/best.pt; pass --force",
        setup=other_results(marker=True), keep=("out",)),
    Row("analyze_out_force_replaces_whole",
        ["analyze", "selectivity", "{done}", "--max-images", "16", "--out", "{tmp}/out",
         "--force"], 0, None, setup=other_results(marker=True), check=replaced_by_this_analysis),
    Row("concurrent_analyses", [], 2,
        r"analysis output folder .*/out is in use by pid \d+ on .*lock file .*/\.out\.lock\)",
        setup=lambda tmp, done: (copy_done(tmp, done, "r1"), copy_done(tmp, done, "r2")),
        fault=concurrent_analyses, check=one_analysis_in_out("r1")),
    Row("analyze_sigint_keeps_out", [], 130,
        r"interrupted: stopped the ablation analysis; an output folder it had not finished was "
        r"left as it was",
        setup=earlier_ablation, keep=("out",), fault=sigint_analysis,
        check=nothing_left_beside("out")),
    Row("analyze_out_locked", ["analyze", "selectivity", "{done}", "--max-images", "16",
                               "--out", "{tmp}/out"], 2,
        rf"analysis output folder .*/out is in use by pid {os.getpid()} on "
        rf"{re.escape(socket.gethostname())} .*lock file .*/\.out\.lock\); wait for that "
        r"analysis to end, or choose another --out",
        setup=lambda tmp, done: (other_results(marker=True)(tmp, done), plant_lock(
            tmp, pid=os.getpid(), start=_start(os.getpid())), os.rename(
            os.path.join(tmp, ".seltrain.lock"), os.path.join(tmp, ".out.lock"))),
        keep=("out",)),
    # Tracebacks
    Row("beton_label_1000", train("bl", *FFCV), 3,
        r"train.beton has label 1000 but its dataset has 10 classes \(labels 0-9\)",
        setup=write_betons(1000), keep=("train.beton",)),
    Row("beton_label_negative", train("bl", *FFCV), 3,
        r"train.beton has label -3 but its dataset has 10 classes",
        setup=write_betons(-3), keep=("train.beton",)),
    Row("resume_changed_arch_and_classes",
        train("r", "model.arch=resnet56", "data.synthetic.num_classes=5", "--resume"), 3,
        r"cannot resume .*/runs/r: the recipe differs from the checkpoint's in 2 key\(s\): "
        r"data.synthetic.num_classes was 10, now 5; model.arch was 'resnet20', now 'resnet56'",
        setup=lambda tmp, done: copy_done(tmp, done), keep=("runs/r",)),
    Row("resume_changed_dataset", train("r", "data.dataset=imagefolder", "data.root={tmp}",
                                        "data.val_size=0", "data.image_size=16",
                                        "train.batch_size=4",
                                        "--resume"), 3,
        r"cannot resume .*: the recipe differs .*data.dataset was 'synthetic', now "
        r"'imagefolder'", setup=lambda tmp, done: (copy_done(tmp, done), imagefolder(tmp)),
        keep=("runs/r",)),
    Row("tune_storage_is_a_file", tune(), 2,
        r"storage .*/afile: .*/afile is a file, not a folder; set storage \(or --storage\)",
        setup=lambda tmp, done: (write_text("afile", "x")(tmp, done), search_recipe(
            "space: {selectivity.alpha: [0.0]}\n", storage="afile")(tmp, done)),
        keep=("afile",)),
    Row("tune_metric_never_reported", tune(), 2,
        r"metric val_acc needs a validation split but data.val_size=0 gives none",
        setup=search_recipe("overrides: [data.val_size=0]\nmetric: val_acc\n"
                            "space: {selectivity.alpha: [0.0]}\n")),
    Row("report_string_accuracy", ["report", "{tmp}/exp"], 3,
        r"alpha0_seed0_t1/metrics.jsonl: epoch 1 has val_acc 'high', not a number in \[0, 1\]",
        setup=experiment({"alpha0_seed0_t1": set_metric("val_acc", "high")}),
        keep=("exp",)),
    Row("report_list_accuracy", ["report", "{tmp}/exp"], 3,
        r"epoch 2 has test_acc \[0.5, 0.6\], not a number in \[0, 1\]",
        setup=experiment({"alpha0_seed0_t1": set_metric("test_acc", [0.5, 0.6], epoch=1)}),
        keep=("exp",)),
    # Silently accepted
    Row("yaml_duplicate_section", ["config", "show", "{tmp}/dup.yaml"], 2,
        r"dup.yaml gives key 'train' twice in one mapping \(lines 1 and 4\); YAML keeps only one",
        setup=write_text("dup.yaml", "train:\n  lr: 0.1\nmodel: {arch: cnn7}\ntrain:\n"
                                     "  epochs: 3\n")),
    Row("yaml_duplicate_nested_key", ["config", "show", "{tmp}/dup.yaml"], 2,
        r"dup.yaml gives key 'lr' twice in one mapping \(lines 2 and 3\)",
        setup=write_text("dup.yaml", "train:\n  lr: 0.1\n  lr: 0.2\n")),
    *(Row(f"robustness_eps_{name}", ["analyze", "robustness", "{done}", "--eps", value], 2,
          rf"--eps {re.escape(value)}: give (comma-separated )?(finite numbers|epsilons from 0 "
          r"to 1)") for name, value in (("nan", "nan"), ("inf", "inf"), ("negative", "0,-1"),
                                         ("two", "2"), ("1e400", "1e400"))),
    Row("gosi_threshold_nan", ["analyze", "orientation", "{done}", "--gosi-threshold", "nan"],
        2, r"--gosi-threshold/--threshold nan: give a finite number"),
    Row("gosi_threshold_negative", ["analyze", "orientation", "{done}", "--gosi-threshold",
                                    "-2"], 2,
        r"--gosi-threshold/--threshold -2: give a gOSI in \[0, 1\)"),
    Row("shift_image_size", ["analyze", "orientation", "{done}", "--shift", "8",
                             "--max-images", "16", "--out", "{tmp}/o"], 2,
        r"--shift 8: give a shift from 1 to 7 pixels \(the images are 8 px; the shift wraps"),
    Row("shift_zero", ["analyze", "orientation", "{done}", "--shift", "0"], 2,
        r"--shift 0: give a shift of at least 1 pixel"),
    Row("write_smart_threshold_negative",
        WRITE + ["--smart-threshold", "-1", "--out", "{tmp}/b.beton"], 2,
        r"--smart-threshold must be >= 0"),
    Row("corrupted_labels_negative", CORRUPTED, 3,
        r"c/labels.npy has label -3; class indices start at 0",
        setup=corrupted([-3] + [0] * 79)),
    Row("corrupted_labels_float", CORRUPTED, 3,
        r"c/labels.npy holds float64 labels; want whole-number class indices",
        setup=corrupted([0.5] * 80)),
    Row("corrupted_labels_fine_no_warning", CORRUPTED, 0, None,
        setup=corrupted(list(range(10)) * 8)),
    Row("imagefolder_symlink_loop",
        ["data", "check", "--dataset", "imagefolder", "--root", "{tmp}/if", "--no-progress"], 0,
        None, notes=(r"imagefolder: left out 3 link\(s\) in .*/if/train that leave their class "
                     r"folder or repeat a file or folder already read",),
        setup=symlink_loop, check=counts_sixteen),
    Row("checkpoint_nan_weights_analyze", ["analyze", "selectivity", "{tmp}/runs/r"], 3,
        r"checkpoint .*/runs/r/checkpoints/best.pt is damaged \(non-finite values in .*\); "
        r"analyse checkpoints/last.pt or an earlier copy of best.pt instead",
        setup=damage("best.pt", "nan"), keep=("runs/r",)),
    Row("checkpoint_flipped_bit_analyze", ["analyze", "selectivity", "{tmp}/runs/r"], 3,
        r"best.pt is damaged \(its weights do not match the checksum stored with them\)",
        setup=damage("best.pt", "flip"), keep=("runs/r",)),
    Row("checkpoint_flipped_bit_resume", train("r", "--resume"), 3,
        r"checkpoint .*/runs/r/checkpoints/last.pt is damaged \(its weights do not match the "
        r"checksum stored with them\); use checkpoints/best.pt \(to resume from it, copy it over "
        r"last.pt\)", setup=damage("last.pt", "flip"), keep=("runs/r",)),
    Row("checkpoint_without_checksum_loads",
        ["analyze", "selectivity", "{tmp}/runs/r", "--max-images", "16"], 0, None,
        setup=old_checkpoint_without_digest),
    Row("search_grid_middle_value", tune("--dry-run"), 2,
        r"train.lr must be > 0, got -1.0 \(space.train.lr in .*s.yaml\)",
        setup=search_recipe("space: {train.lr: {grid: [0.1, -1.0, 0.2]}}\n")),
    Row("search_negative_seed", tune("--dry-run"), 2,
        r"train.seed must be >= 0, got -7 \(seeds in .*s.yaml\)",
        setup=search_recipe("seeds: [-7]\nspace: {selectivity.alpha: [0.0]}\n")),
    Row("search_missing_base", tune("--dry-run"), 2,
        r"base is missing \(in .*s.yaml\); name the training recipe every trial starts from",
        setup=write_text("s.yaml", "space: {selectivity.alpha: [0.0]}\n")),
    Row("search_duplicate_grid_values", tune("--dry-run"), 2,
        r"space.selectivity.alpha gives 0 more than once \(in .*s.yaml\); each value makes "
        r"its own trials",
        setup=search_recipe("space: {selectivity.alpha: [0.0, 1.0, 0]}\n")),
    Row("search_duplicate_seeds", tune("--dry-run"), 2,
        r"seeds gives 1 more than once \(in .*s.yaml\)",
        setup=search_recipe("seeds: [0, 1, 1]\nspace: {selectivity.alpha: [0.0]}\n")),
    Row("search_name_absolute", tune("--dry-run", "--name", "/etc"), 2,
        r"--name must be a plain folder name inside the storage .*got '/etc'",
        setup=search_recipe("space: {selectivity.alpha: [0.0]}\n")),
    Row("search_name_parent", tune("--dry-run"), 2,
        r"name \(in .*s.yaml\) must be a plain folder name inside the storage .*got '../../x'",
        setup=search_recipe("name: ../../x\nspace: {selectivity.alpha: [0.0]}\n")),
    # --grid and --seeds (a recipe tried small first): refused before anything starts.
    Row("search_grid_key_not_searched", tune("--dry-run", "--grid", "train.lr=0.1,0.2"), 2,
        r"--grid train.lr: not a searched key of .*s.yaml; the recipe searches "
        r"selectivity.alpha \(set other keys with --set\)",
        setup=search_recipe("space: {selectivity.alpha: [0.0, -1.0]}\n")),
    Row("search_grid_key_misspelt", tune("--dry-run", "--grid", "selectivity.alhpa=0,-1"), 2,
        r"--grid selectivity.alhpa: not a searched key .*did you mean 'selectivity.alpha'",
        setup=search_recipe("space: {selectivity.alpha: [0.0, -1.0]}\n")),
    Row("search_grid_wrong_type", tune("--dry-run", "--grid", "selectivity.alpha=0,low"), 2,
        r"selectivity.alpha must be float, got 'low' \(--grid selectivity.alpha\)",
        setup=search_recipe("space: {selectivity.alpha: [0.0, -1.0]}\n")),
    Row("search_grid_without_values", tune("--dry-run", "--grid", "selectivity.alpha"), 2,
        r"--grid 'selectivity.alpha' must look like KEY=V1,V2",
        setup=search_recipe("space: {selectivity.alpha: [0.0, -1.0]}\n")),
    Row("search_seeds_not_numbers", tune("--dry-run", "--seeds", "0,one"), 2,
        r"--seeds must be whole numbers separated by commas, e.g. --seeds 0,1; got '0,one'",
        setup=search_recipe("space: {selectivity.alpha: [0.0]}\n")),
    Row("search_seeds_repeated", tune("--dry-run", "--seeds", "2,2"), 2,
        r"--seeds gives 2 more than once",
        setup=search_recipe("space: {selectivity.alpha: [0.0]}\n")),
    Row("experiment_locked", tune(), 2,
        rf"experiment .*/exp/s is in use by pid {os.getpid()} on "
        rf"{re.escape(socket.gethostname())} .*lock file .*/exp/\.s\.lock\); wait for that "
        r"search to end, or pass --name",
        setup=lambda tmp, done: (search_recipe("space: {selectivity.alpha: [0.0]}\n")(
            tmp, done), plant_lock(os.path.join(tmp, "exp"), pid=os.getpid(),
                                   start=_start(os.getpid())),
            os.rename(os.path.join(tmp, "exp/.seltrain.lock"), os.path.join(tmp, "exp/.s.lock")))),
    Row("analyze_experiment_lists_skipped",
        ["analyze", "selectivity", "{tmp}/exp", "--max-images", "16"], 0, None,
        setup=experiment({"a": None, "b": no_checkpoints}), check=lists_the_skipped_trial),
    Row("report_inf_accuracy", ["report", "{tmp}/exp"], 3,
        r"epoch 1 has val_acc inf, not a number in \[0, 1\]",
        setup=experiment({"alpha0_seed0_t1": set_metric("val_acc", float("inf"))}),
        keep=("exp",)),
    Row("report_negative_accuracy", ["report", "{tmp}/exp"], 3,
        r"epoch 1 has test_acc -0.5, not a number in \[0, 1\]",
        setup=experiment({"alpha0_seed0_t1": set_metric("test_acc", -0.5)}), keep=("exp",)),
    Row("num_workers_huge", SHOW + ["data.num_workers=100000"], 2,
        r"data.num_workers must be in \[0, \d+\] on this machine \(4 per CPU, at least 32\), "
        r"got 100000"),
    Row("run_name_control_character", SHOW + ["run.name=a\x1bb"], 2,
        r"run.name must not hold control characters .*got 'a\\x1bb'"),
    # Smaller
    Row("write_jpeg_quality_500", WRITE + ["--jpeg-quality", "500", "--out", "{tmp}/b.beton"],
        2, r"--jpeg-quality must be in \[1, 100\], got 500"),
    Row("write_max_resolution_zero", WRITE + ["--max-resolution", "0", "--out",
                                              "{tmp}/b.beton"], 2,
        r"--max-resolution must be >= 1, got 0"),
    Row("write_compress_probability_two", WRITE + ["--compress-probability", "2", "--out",
                                                   "{tmp}/b.beton"], 2,
        r"--compress-probability must be in \[0, 1\], got 2.0"),
    Row("relative_data_root_resolved", SHOW + ["data.root=some/data"], 0, None,
        check=root_resolved),
    Row("edited_metrics_resume_keeps_file", train("r", "--resume"), 0, None,
        notes=(r"rebuilt .*metrics.jsonl from checkpoints/last.pt \(its records differed; the "
               r"replaced file is kept as metrics.jsonl.replaced-\d{8}-\d{6}\)",),
        setup=edited_metrics, keep=("runs/r/checkpoints",), check=replaced_file_kept),
    Row("abbreviated_option", ["analyze", "selectivity", "{done}", "--data-roo", "/x"], 2,
        r"unrecognized arguments: --data-roo /x \(did you mean '--data-root'\?\) \(see "
        r"'seltrain --help'\)"),
    # ---- A network seltrain did not train (--model): one line each, nothing written
    Row("model_unknown", ANY_MODEL + ["--model", "torchvision:resnt18"], 2,
        r"--model torchvision:resnt18: torchvision has no classifier 'resnt18' \(did you "
        r"mean 'resnet18'\?\)"),
    Row("model_weights_do_not_fit", ANY_MODEL + ["--model", "torchvision:resnet18",
                                                 "--weights", "{tmp}/r18.pth"], 2,
        r"r18.pth does not fit torchvision:resnet18: layer1.0.conv1.weight is \[64, 64, 1, 1\] "
        r"in the file but \[64, 64, 3, 3\] in the model",
        setup=lambda tmp, done: r18_weights(replace={"layer1.0.conv1.weight": conv_1x1()})(
            tmp, done), keep=("r18.pth",)),
    Row("model_layer_unknown", ANY_MODEL + ["--model", "torchvision:resnet18", "--weights",
                                            "{tmp}/r18.pth", "--layers", "layer4.2"], 2,
        r"no layer 'layer4.2' in ResNet \(did you mean 'layer4.1'\?\); valid names: conv1, "
        r"maxpool, layer1.0, layer1.0.conv1", setup=r18_weights(), check=no_target_folder),
    Row("model_class_count", ANY_MODEL + ["--model", "torchvision:resnet18"], 2,
        r"the data has 10 classes but torchvision:resnet18 has 1000 outputs; pass "
        r"--class-map FILE \(data class -> output index"),
    Row("model_hub_weights_missing", ANY_MODEL + ["--model", "torchvision:resnet18",
                                                  "--weights", "IMAGENET1K_V1"], 2,
        r"--weights ResNet18_Weights.IMAGENET1K_V1: resnet18-f37072fd.pth is not in torch's "
        r"hub cache; seltrain does not download: put resnet18-f37072fd.pth \(from .*\) into "
        r".*/hub/checkpoints/, or pass the file with --weights FILE",
        env={"TORCH_HOME": "{tmp}"}),
    Row("model_factory_not_importable", ANY_MODEL + ["--model", "nosuch.nets:build"], 2,
        r"--model nosuch.nets:build: cannot import nosuch.nets \(ModuleNotFoundError: No "
        r"module named 'nosuch'\); put it on PYTHONPATH"),
    Row("model_factory_not_a_module", ANY_MODEL + ["--model", "{tmp}/nets.py:build"], 2,
        r"build\(\) returned a int, not an nn.Module; return the network itself",
        setup=write_text("nets.py", "def build():\n    return 3\n")),
    Row("model_and_path", ["analyze", "selectivity", "{done}", "--model",
                           "torchvision:resnet18"], 2,
        r"give either PATH \(.*\) or --model, not both"),
    Row("weights_without_model", ["analyze", "ablation", "{done}", "--weights", "x.pth"], 2,
        r"--weights goes with --model \(a network seltrain did not train\)"),
    Row("analysis_without_target", ["analyze", "ablation"], 2,
        r"give PATH \(a checkpoint, run folder, experiment or target folder\) or --model NAME "
        r"with --data"),
    Row("abbreviated_flag", ["train", SYN, "--resum"], 2,
        r"unrecognized arguments: --resum \(did you mean '--resume'\?\)"),
    # ---- The analyses on a Ray cluster (refused before any Ray starts)
    Row("fanout_no_cluster", ["analyze", "selectivity", "{done}", "--address", "127.0.0.1:1"],
        2, r"no Ray cluster answers at --address 127.0.0.1:1 .*ray start --head"),
    Row("fanout_negative_gpus", ["analyze", "selectivity", "{done}", "--address", "local",
                                 "--gpus-per-task", "-1"], 2,
        r"--gpus-per-task -1: give 0, a fraction below 1, or a whole number of GPUs"),
    Row("fanout_model", ANY_MODEL + ["--model", "torchvision:resnet18", "--address", "local"],
        2, r"--address analyses checkpoints, .*a --model network runs in one process"),
]


def _start(pid):
    from seltrain.runlock import _proc_start

    return _proc_start(pid)


def _old(_, path):
    t = time.time() - 1000
    os.utime(path, (t, t))


# --------------------------------------------------------------------------- the runner

@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished 2-epoch run (alpha 0): copied by the rows that need an earlier run."""
    out = tmp_path_factory.mktemp("done")
    assert main(train("r", out=str(out))) == 0  # named as the rows' copies are
    return str(out / "r")


def _marks(row):
    return [pytest.mark.faults, pytest.mark.slow] if row.fault else []


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=_marks(r)) for r in ROWS])
def test_bad_input(row, tmp_path, capsys, request):
    tmp = str(tmp_path)
    done = request.getfixturevalue("done")
    if row.id.startswith("disk_full"):
        row.tmpfs = request.getfixturevalue("tmpfs")
    if row.setup:
        row.setup(tmp, done)
    before = checksums(tmp, row.keep)
    for key, value in row.env.items():
        request.getfixturevalue("monkeypatch").setenv(key, fill(value, tmp, done))
    capsys.readouterr()
    if row.subprocess:
        code, out, err = _finish(_popen(fill_all(row.argv, tmp, done)))
    elif row.fault is None:
        try:
            code = main(fill_all(row.argv, tmp, done))
        except SystemExit as e:  # argparse
            code = e.code
        captured = capsys.readouterr()
        out, err = captured.out, captured.err
    else:
        code, out, err = row.fault(row, tmp)
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith(("seltrain: error:", "seltrain: interrupted:",
                                                 "seltrain: terminated"))]
    notes = [ln for ln in lines if ln not in said]
    if row.line is None:
        assert said == [], err
    else:
        assert len(said) == 1 and re.search(row.line, said[0]), err
        assert len(said[0]) < 1000, said[0][:2000]  # every echoed value is an excerpt
    assert len(notes) == len(row.notes), err
    for pattern in row.notes:
        assert any(re.search(pattern, n) for n in notes), (pattern, err)
    assert code == row.code, (code, err[-3000:])
    assert checksums(tmp, row.keep) == before
    if row.check:
        row.check(tmp, done, out)


@pytest.mark.parametrize("levels", [9, 10])
def test_alias_bomb_is_refused_fast(tmp_path, levels, capsys):
    """9 levels of 9 aliases expand to 9^10 (3.5e9) values, 10 levels to nine times more:
    both are refused in the same short time (the size is counted on the node graph, never
    expanded), and the line stays short. Loose bound: a check of scale, not a benchmark."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels))
    t0 = time.perf_counter()
    assert main(["config", "show", str(path)]) == 2
    assert time.perf_counter() - t0 < 2.0
    (line,) = capsys.readouterr().err.splitlines()
    assert "more than 10000 values" in line and len(line) < 400


def test_metrics_jsonl_is_strict_json(done):
    """alpha = 0 and epochs shorter than 20 steps: batch SI is never read in epoch 2, and
    its record says null, not NaN."""
    records = []
    with open(os.path.join(done, "metrics.jsonl")) as f:
        for line in f:
            records.append(json.loads(line, parse_constant=lambda c: pytest.fail(c)))
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[1]["train_batch_si"] is None and records[0]["train_batch_si"] > 0
