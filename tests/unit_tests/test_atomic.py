"""seltrain.atomic: a file or a folder is replaced whole or not at all, every temporary carries
one name (``.<name>.tmp-<pid>-<random>``), and the cleanup removes what killed writers left,
and only that."""
import os
import re
import subprocess
import sys

import pytest

from seltrain.atomic import atomic_folder, atomic_path, atomic_write, remove_stale_temporaries


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "deep" / "summary.json"  # the folder is made on the way
    with atomic_write(str(path)) as f:
        f.write("first\n")
    with atomic_write(str(path)) as f:
        assert path.read_text() == "first\n"  # readers see the old file until the rename
        f.write("second ü\n")
    assert path.read_text(encoding="utf-8") == "second ü\n"
    with atomic_write(str(path), "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["summary.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_write(str(path)) as f:
            f.write("half")
            raise RuntimeError("mid-write")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["metrics.jsonl"]
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
        with atomic_write(str(path), "a"):
            pass


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_get_the_umask_derived_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_write(str(tmp_path / "config.yaml")) as f:
            f.write("x: 1\n")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "config.yaml").st_mode & 0o777 == 0o666 & ~umask


def test_atomic_path_hands_a_writer_the_one_temporary_name(tmp_path):
    out = tmp_path / "train.beton"
    with atomic_path(str(out)) as tmp:
        name = os.path.basename(tmp)
        assert os.path.dirname(tmp) == str(tmp_path)
        assert re.fullmatch(rf"\.train\.beton\.tmp-{os.getpid()}-[0-9a-f]{{8}}", name), name
        assert not out.exists()
        with open(tmp, "wb") as f:  # as FFCV opens it: by name, truncating
            f.write(b"beton")
    assert out.read_bytes() == b"beton" and os.listdir(tmp_path) == ["train.beton"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(out)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise KeyboardInterrupt
    assert out.read_bytes() == b"beton" and os.listdir(tmp_path) == ["train.beton"]


def test_atomic_folder_replaces_the_folder_whole(tmp_path):
    out = tmp_path / "ablation"
    with atomic_folder(str(out)) as staging:
        assert re.fullmatch(rf"\.ablation\.tmp-{os.getpid()}-[0-9a-f]{{8}}",
                            os.path.basename(staging)), staging
        assert os.path.dirname(staging) == str(tmp_path) and os.listdir(staging) == []
        assert not out.exists()  # nothing at the name until the block ends
        (tmp_path / os.path.basename(staging) / "summary.json").write_text("first")
    assert os.listdir(tmp_path) == ["ablation"] and os.listdir(out) == ["summary.json"]
    with atomic_folder(str(out)) as staging:
        with open(os.path.join(staging, "units.csv"), "w") as f:
            f.write("second")
        assert (out / "summary.json").read_text() == "first"  # the old folder, whole
    # The new folder replaces the old one: nothing of the old is left, nor any temporary.
    assert os.listdir(tmp_path) == ["ablation"] and os.listdir(out) == ["units.csv"]


def test_a_failed_folder_keeps_the_old_one_and_removes_its_temporary(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("earlier")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(str(out)) as staging:
            with open(os.path.join(staging, "summary.json"), "w") as f:
                f.write("half")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["out"] and (out / "summary.json").read_text() == "earlier"
    # A file where the folder goes is replaced too (the caller decides whether it may be).
    (tmp_path / "f").write_text("a file")
    with atomic_folder(str(tmp_path / "f")) as staging:
        pass
    assert (tmp_path / "f").is_dir() and sorted(os.listdir(tmp_path)) == ["f", "out"]


def test_cleanup_removes_dead_writers_temporaries_only(tmp_path, capsys):
    dead, live = _dead_pid(), os.getppid()  # our parent runs for as long as we do
    names = {
        f".last.pt.tmp-{dead}-0a1b2c3d": "removed",        # a killed checkpoint write
        f".metrics.jsonl.tmp-{dead}-ffff0000": "removed",  # a killed metrics write
        f".best.pt.tmp-{os.getpid()}-12345678": "removed",  # ours: never mid-write here
        f".last.pt.tmp-{live}-0a1b2c3d": "kept",           # a live process's write
        "last.pt": "kept", "notes.tmp-1-2": "kept", ".seltrain.lock": "kept",
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    # A killed atomic_folder's staging folder, files in it, goes too; a live one's stays.
    names[f".ablation.tmp-{dead}-abcdef01"] = "removed"
    names[f".ablation.tmp-{live}-abcdef01"] = "kept"
    for name in (f".ablation.tmp-{dead}-abcdef01", f".ablation.tmp-{live}-abcdef01"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text("{")
    removed = remove_stale_temporaries(str(tmp_path))
    assert removed == sorted(n for n, what in names.items() if what == "removed")
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, what in names.items()
                                                  if what == "kept")
    err = capsys.readouterr().err
    assert err == (f"seltrain: removed {', '.join(removed)}, left in {tmp_path} by an "
                   "interrupted write\n")
    assert remove_stale_temporaries(str(tmp_path)) == []
    assert capsys.readouterr().err == ""
    assert remove_stale_temporaries(str(tmp_path / "missing")) == []


def test_cleanup_of_one_file_and_what_it_held_outside(tmp_path):
    dead = _dead_pid()
    for name in (f".a.beton.tmp-{dead}-00000000", f".a.beton.tmp-{dead}-00000000.shm",
                 f".a.beton.json.tmp-{dead}-11111111", f".b.beton.tmp-{dead}-22222222"):
        (tmp_path / name).write_text("held")
    seen = []
    said = []
    removed = remove_stale_temporaries(str(tmp_path), of=str(tmp_path / "a.beton"),
                                       before_remove=lambda p: seen.append(
                                           (os.path.basename(p), open(p).read())),
                                       say=said.append)
    assert removed == [f".a.beton.tmp-{dead}-00000000", f".a.beton.tmp-{dead}-00000000.shm"]
    assert seen == [(n, "held") for n in removed]
    assert len(said) == 1 and said[0].startswith(f"seltrain: removed {removed[0]}, ")
    assert sorted(os.listdir(tmp_path)) == [f".a.beton.json.tmp-{dead}-11111111",
                                            f".b.beton.tmp-{dead}-22222222"]
