"""checkpoint.atomic_save / atomic_copy: a crash or a full disk mid-write leaves the previous
file as it was, no temporary is left behind by a failed write, and the file gets the
umask-derived mode (readable by the other users and nodes of a shared run folder)."""
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from seltrain import checkpoint
from seltrain.atomic import remove_stale_temporaries
from seltrain.errors import CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(epoch: int, n: int = 1000) -> dict:
    return {"model": {"w": torch.full((n,), float(epoch))}, "epoch": epoch}


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "ckpt" / "last.pt")  # the folder is made on the way
    checkpoint.atomic_save(_state(1), path)
    checkpoint.atomic_save(_state(2), path)
    got = checkpoint.load(path)
    assert got["epoch"] == 2 and torch.equal(got["model"]["w"], torch.full((1000,), 2.0))
    checkpoint.atomic_copy(path, str(tmp_path / "ckpt" / "best.pt"))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["best.pt", "last.pt"]
    assert (tmp_path / "ckpt" / "best.pt").read_bytes() == (tmp_path / "ckpt" / "last.pt") \
        .read_bytes()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoints_get_the_umask_derived_mode_not_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        checkpoint.atomic_save(_state(1), str(tmp_path / "last.pt"))
        checkpoint.atomic_copy(str(tmp_path / "last.pt"), str(tmp_path / "best.pt"))
    finally:
        os.umask(old)
    want = 0o666 & ~umask  # 0644, 0640, 0664
    assert oct(os.stat(tmp_path / "last.pt").st_mode & 0o777) == oct(want)
    assert oct(os.stat(tmp_path / "best.pt").st_mode & 0o777) == oct(want)


@pytest.mark.faults
def test_sigkill_mid_write_leaves_the_old_checkpoint_and_a_temporary_the_next_run_removes(
        tmp_path):
    path = str(tmp_path / "last.pt")
    checkpoint.atomic_save(_state(1), path)
    before = (tmp_path / "last.pt").read_bytes()
    # A real SIGKILL after 4 kB of the new checkpoint's bytes have reached the disk.
    code = ("import os, signal, sys\n"
            "from seltrain import checkpoint\n"
            "def write(f):\n"
            "    f.write(b'x' * 4096); f.flush(); os.fsync(f.fileno())\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "checkpoint._write_replace(sys.argv[1], write)\n")
    r = subprocess.run([sys.executable, "-c", code, path], cwd=REPO, capture_output=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (tmp_path / "last.pt").read_bytes() == before
    assert checkpoint.load(path)["epoch"] == 1
    left = sorted(f for f in os.listdir(tmp_path) if f != "last.pt")
    assert len(left) == 1 and re.fullmatch(r"\.last\.pt\.tmp-\d+-[0-9a-f]{8}", left[0]), left
    assert os.path.getsize(tmp_path / left[0]) == 4096
    assert remove_stale_temporaries(str(tmp_path)) == left
    assert os.listdir(tmp_path) == ["last.pt"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs of our own: a real full disk (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


@pytest.mark.faults
def test_a_full_disk_mid_write_keeps_the_old_file_and_removes_the_temporary(small_disk):
    path = str(small_disk / "last.pt")
    checkpoint.atomic_save(_state(1, n=50_000), path)  # 200 kB
    before = (small_disk / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"no space left on .* while writing last.pt; "
                                              r"the previous checkpoints are kept"):
        checkpoint.atomic_save(_state(2, n=500_000), path)  # 2 MB: the disk fills mid-write
    assert os.listdir(small_disk) == ["last.pt"]  # no temporary left
    assert (small_disk / "last.pt").read_bytes() == before
    assert checkpoint.load(path)["epoch"] == 1
