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


# --------------------------------------------------------------------------- helpers

def fill(text: str, tmp, done) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{done}", str(done))


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
                       for p in glob.glob(os.path.join(tmp, "big.beton.tmp-*")))


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
    """SIGKILL mid-write leaves big.beton.tmp-PID, the lock and FFCV's shared memory; the same
    command again frees all three (saying so) and writes the file."""
    argv = [fill(a, tmp, "") for a in BIG_WRITE]
    proc = _popen(argv)
    _wait_for(_writing(tmp), proc, "the write under way")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert os.path.exists(os.path.join(tmp, f"big.beton.tmp-{proc.pid}"))
    assert os.path.exists(os.path.join(tmp, ".big.beton.lock"))
    with open(os.path.join(tmp, f"big.beton.tmp-{proc.pid}.shm")) as f:
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
    assert not glob.glob(os.path.join(run, "checkpoints", ".tmp-*"))
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
    assert not glob.glob(os.path.join(tmp, "*.tmp-*"))
    assert not os.path.exists(os.path.join(tmp, ".big.beton.lock"))
    assert not os.path.exists(os.path.join(tmp, "big.beton.json"))


def big_beton_written(tmp, done, out):
    assert os.path.exists(os.path.join(tmp, "big.beton.json"))
    assert not glob.glob(os.path.join(tmp, "*.tmp-*"))
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
    assert not glob.glob(os.path.join(tmp, "runs/r/checkpoints/.tmp*"))


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
        notes=(r"removed 1 temporary file\(s\) left in .*checkpoints by an interrupted "
               r"checkpoint write: \.tmp-\d+-torn\.pt",),
        setup=lambda tmp, done: write_text(
            f"runs/r/checkpoints/.tmp-{dead_pid()}-torn.pt", b"PK\x03\x04 torn")(
            tmp, copy_done(tmp, done)),
        keep=("runs/r/checkpoints/last.pt", "runs/r/checkpoints/best.pt",
              "runs/r/metrics.jsonl"),
        check=no_checkpoint_temporaries),
    Row("stale_beton_temporary_sigkill", [], 0, None,
        notes=(r"removed the stale lock .*\.big\.beton\.lock \(pid \d+ on .*no longer running\)",
               r"removed big\.beton\.tmp-(\d+), big\.beton\.tmp-\1\.shm, left by an "
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
    Row("report_missing_folder", ["report", "{tmp}/nothing"], 2,
        r"experiment folder not found"),
    Row("write_negative_workers", WRITE + ["--num-workers", "-1", "--out", "{tmp}/b.beton"],
        2, r"--num-workers must be >= 0"),
    Row("unknown_flag", ["train", SYN, "--bogus"], 2,
        r"unrecognized arguments: --bogus \(see 'seltrain --help'\)"),
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
    done = request.getfixturevalue("done") if row.fault is None else ""
    if row.id.startswith("disk_full"):
        row.tmpfs = request.getfixturevalue("tmpfs")
    if row.setup:
        row.setup(tmp, done)
    before = checksums(tmp, row.keep)
    capsys.readouterr()
    if row.subprocess:
        code, out, err = _finish(_popen([fill(a, tmp, done) for a in row.argv]))
    elif row.fault is None:
        try:
            code = main([fill(a, tmp, done) for a in row.argv])
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
    assert len(notes) == len(row.notes), err
    for pattern in row.notes:
        assert any(re.search(pattern, n) for n in notes), (pattern, err)
    assert code == row.code, (code, err[-3000:])
    assert checksums(tmp, row.keep) == before
    if row.check:
        row.check(tmp, done, out)


def test_metrics_jsonl_is_strict_json(done):
    """alpha = 0 and epochs shorter than 20 steps: batch SI is never read in epoch 2, and
    its record says null, not NaN."""
    records = []
    with open(os.path.join(done, "metrics.jsonl")) as f:
        for line in f:
            records.append(json.loads(line, parse_constant=lambda c: pytest.fail(c)))
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[1]["train_batch_si"] is None and records[0]["train_batch_si"] > 0
