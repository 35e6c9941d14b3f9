"""The CLI's own papercuts: ``--version`` and the help of ``config show``."""
import os
import tomllib
from importlib import metadata

import pytest

import seltrain
from seltrain.cli import main, version

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_version_is_the_installed_package_version(capsys):
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"seltrain {declared}\n"
    assert version() == metadata.version("seltrain") == declared
    # The fallback for a source tree used without installing it says the same.
    assert seltrain.__version__ == declared


def test_version_falls_back_without_package_metadata(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert version() == seltrain.__version__


def test_config_show_help_describes_its_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["config", "show", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "config a recipe YAML, e.g. configs/quickstart.yaml" in out
    assert "key.sub=value overrides, applied in order after the file" in out
    assert "every key, defaults filled in and overrides applied" in out


def test_a_closed_pipe_ends_quietly(tmp_path):
    """``seltrain tune --dry-run | head -1``: the reader leaves after one line; seltrain stops
    without a traceback and with the status a shell gives a command killed by SIGPIPE. The
    search lists 3,000 trials (about 135 kB, twice a pipe's 64 kB buffer), so the write that
    meets the closed pipe is certain, not a race."""
    import subprocess
    import sys

    from helpers import subprocess_env

    seeds = ", ".join(map(str, range(200)))
    recipe = tmp_path / "many.yaml"
    recipe.write_text(f"base: {REPO}/configs/synthetic.yaml\n"
                      "space:\n  selectivity.alpha: {signed_log: {min: 0.1, max: 100, num: 7, "
                      f"zero: true}}}}\nseeds: [{seeds}]\nscheduler: {{type: none}}\n")
    p = subprocess.Popen([sys.executable, "-m", "seltrain", "tune", "--search", str(recipe),
                          "--dry-run"], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141, err
    assert first.startswith("search ") and "many.yaml" in first
    assert err == ""


# Two ranks printing at once into the launcher's one pipe, started as launchers start them
# (python -u): each print is several writes (text, separators, newline) unless the CLI joins
# them; unjoined, 3000 lines each interleave mid-line within the first few hundred.
_RANK_PRINTS = """
import sys
from seltrain.cli import _whole_lines
_whole_lines()
rank = sys.argv[1]
for i in range(3000):
    print("seltrain: rank", rank, "line", i)
    print("seltrain: error: rank", rank, "line", i, file=sys.stderr)
"""


def test_ranks_sharing_a_pipe_write_whole_lines():
    import re
    import subprocess
    import sys

    from helpers import subprocess_env

    env = subprocess_env(WORLD_SIZE=2)
    both = " & ".join(f"{sys.executable} -u -c '{_RANK_PRINTS}' {r}" for r in (0, 1))
    out = subprocess.run(["sh", "-c", f"{both}; wait"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for text, prefix in ((out.stdout, "seltrain: rank"), (out.stderr, "seltrain: error: rank")):
        lines = text.splitlines()
        assert len(lines) == 6000
        bad = [line for line in lines if not re.fullmatch(rf"{prefix} [01] line \d+", line)]
        assert bad == [], bad[:5]
        for r in (0, 1):
            assert [int(line.rsplit(" ", 1)[1]) for line in lines
                    if line.startswith(f"{prefix} {r} ")] == list(range(3000))


def test_a_rank_of_a_multi_rank_job_exits_with_its_code_and_all_its_output():
    """A rank (WORLD_SIZE > 1) leaves through os._exit, skipping the interpreter's
    finalization (cli.entry): its exit status and every line it wrote, through a pipe, must
    still arrive, and its atexit handlers still run."""
    import subprocess
    import sys

    from helpers import REPO, subprocess_env

    env = subprocess_env(WORLD_SIZE=2)
    shown = subprocess.run([sys.executable, "-m", "seltrain", "config", "show",
                            "configs/synthetic.yaml", "train.epochs=7"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.endswith("\n") and "epochs: 7" in shown.stdout
    plain = subprocess.run([sys.executable, "-m", "seltrain", "config", "show",
                            "configs/synthetic.yaml", "train.epochs=7"], cwd=REPO,
                           env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert shown.stdout == plain.stdout

    missing = subprocess.run([sys.executable, "-m", "seltrain", "train", "no/such.yaml"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.startswith("seltrain: error: ") and missing.stderr.count("\n") == 1

    # atexit handlers registered by anything the command imported still run.
    code = ("import atexit, sys; atexit.register(lambda: print('atexit ran', flush=True)); "
            "sys.argv = ['seltrain', 'config', 'show', 'configs/synthetic.yaml']; "
            "from seltrain.cli import entry; entry()")
    hooked = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert hooked.returncode == 0 and hooked.stdout.endswith("atexit ran\n"), hooked


def test_no_parser_takes_abbreviations():
    """Every (sub)command refuses abbreviated options: `--data DIR` is never `--data-root`."""
    import argparse

    from seltrain.cli import build_parser

    seen, todo = 0, [build_parser()]
    while todo:
        p = todo.pop()
        assert p.allow_abbrev is False, p.prog
        seen += 1
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
    assert seen > 10
