"""The ``seltrain`` command line (seltrain/cli.py): what each command line parses into, each
command reaching its area, every parse mistake and every error class as one line with its exit
code, SIGTERM during training as an interrupt (143), ``--version``, a closed pipe, the
output and exit of a rank of a multi-rank job, and the analyses ``report --help`` offers."""
import argparse
import errno
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from importlib import metadata

import pytest

import seltrain
from helpers import REPO, subprocess_env
from seltrain import cli
from seltrain.cli import build_parser, main, version
from seltrain.errors import (CheckpointError, ConfigError, DataError, Interrupted, PeerLost,
                             TrainingError)

SYNTHETIC = os.path.join(REPO, "configs", "synthetic.yaml")


def test_each_command_line_parses_into_its_arguments():
    p = build_parser()
    a = p.parse_args(["train", "c.yaml", "train.lr=0.1", "train.epochs=2", "--resume"])
    assert a.func is cli._train and a.sigterm_as_interrupt is True
    assert (a.config, a.overrides, a.resume) == ("c.yaml", ["train.lr=0.1", "train.epochs=2"],
                                                 True)
    assert (a.local_rank, a.local_rank_sub) == (None, None)
    assert p.parse_args(["train", "c.yaml"]).resume is False
    # the deepspeed launcher's --local_rank, before the subcommand or appended after it
    assert p.parse_args(["--local_rank=1", "train", "c.yaml"]).local_rank == 1
    assert p.parse_args(["train", "c.yaml", "--local_rank=2"]).local_rank_sub == 2
    a = p.parse_args(["config", "show", "c.yaml", "x.y=1"])
    assert a.func is cli._config_show and (a.config, a.overrides) == ("c.yaml", ["x.y=1"])
    a = p.parse_args(["analyze", "ablation", "runs/r", "--max-images", "64"])
    assert (a.func.__module__, a.analysis, a.path, a.max_images) == (
        "seltrain.analysis.commands", "ablation", "runs/r", "64")
    a = p.parse_args(["tune", "--search", "alpha", "--dry-run", "--set", "train.epochs=1",
                      "--set", "train.lr=0.2"])
    assert (a.func.__module__, a.search, a.dry_run, a.overrides) == (
        "seltrain.tuning.commands", "alpha", True, ["train.epochs=1", "train.lr=0.2"])
    a = p.parse_args(["data", "write", "--split", "train", "--out", "t.beton"])
    assert (a.func.__module__, a.split, a.out) == ("seltrain.data.commands", "train", "t.beton")
    assert p.parse_args(["report", "exp"]).func.__module__ == "seltrain.report"
    commands = p._subparsers._group_actions[0].choices
    assert list(commands) == ["train", "config", "data", "tune", "report", "analyze"]


def test_each_command_reaches_its_area(capsys, tmp_path):
    """In-process ``main``: each subcommand runs its own code, seen in what it prints and
    returns."""
    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("config", "show", SYNTHETIC, "train.epochs=7")
    assert code == 0 and "  epochs: 7\n" in out and err == ""
    code, out, _ = run("data", "check", "--dataset", "synthetic", "data.synthetic.train_size=64",
                       "data.synthetic.test_size=32")
    assert code == 0 and out == "all 96 images of synthetic decode\n"
    missing = tmp_path / "none"
    assert run("analyze", "ablation", str(missing)) == (
        3, "", f"seltrain: error: no checkpoint, run folder or experiment at {missing}\n")
    assert run("report", str(missing)) == (
        2, "", f"seltrain: error: experiment folder not found: {missing}\n")
    code, _, err = run("tune", "--search", "nope", "--dry-run")
    assert code == 2 and err.startswith("seltrain: error: no search recipe 'nope' in tune/; ")
    code, _, err = run("train", str(tmp_path / "nope.yaml"))
    assert code == 2 and err == f"seltrain: error: config file not found: {tmp_path}/nope.yaml\n"


@pytest.mark.parametrize("argv,message", [
    ([], "the following arguments are required: command (see 'seltrain --help')"),
    (["trian"], "argument command: invalid choice: 'trian' (choose from 'train', 'config', "
                "'data', 'tune', 'report', 'analyze') (see 'seltrain --help')"),
    (["train", "c.yaml", "--resum"], "unrecognized arguments: --resum (did you mean "
                                     "'--resume'?) (see 'seltrain --help')"),
    (["train", "c.yaml", "--resu"], "unrecognized arguments: --resu (did you mean "
                                    "'--resume'?)"),  # no abbreviations
    (["config"], "the following arguments are required: config_command (see 'seltrain "
                 "config --help')"),
    (["analyze", "ablation", "runs/r", "--layers"], "argument --layers: expected at least one "
                                                    "argument"),
    (["analyze", "ablaton", "runs/r"], "invalid choice: 'ablaton'"),
    (["--local_rank=x", "train", "c.yaml"], "argument --local_rank/--local-rank: invalid int "
                                            "value: 'x'"),
])
def test_a_parse_mistake_is_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("seltrain: error: ") and err.count("\n") == 1
    assert message in err, err


def _raising(exc):
    def command(args):
        raise exc
    return command


@pytest.mark.parametrize("exc,code,line", [
    (ConfigError("train.lr must be > 0"), 2, "seltrain: error: train.lr must be > 0"),
    (DataError("cannot read x.png"), 3, "seltrain: error: cannot read x.png"),
    (CheckpointError("best.pt is damaged"), 3, "seltrain: error: best.pt is damaged"),
    (TrainingError("the loss is nan"), 4, "seltrain: error: the loss is nan"),
    (PeerLost("rank 1 lost contact"), 5, "seltrain: error: rank 1 lost contact"),
    (ConfigError("two\nlines"), 2, "seltrain: error: two lines"),
    (Interrupted("the last checkpoint is kept"), 130,
     "seltrain: interrupted: the last checkpoint is kept"),
    (KeyboardInterrupt(), 130, "seltrain: interrupted"),
    (OSError(errno.ENOSPC, "No space left on device", "/full/disk/out.csv"), 3,
     "seltrain: error: no space left on /full/disk while writing its output; free space there "
     "(or choose a folder with room) and run again"),
])
def test_errors_are_one_line_with_their_exit_code(monkeypatch, capsys, exc, code, line):
    monkeypatch.setattr(cli, "_config_show", _raising(exc))
    monkeypatch.delenv("SELTRAIN_DEBUG", raising=False)
    assert main(["config", "show", "x.yaml"]) == code
    assert capsys.readouterr() == ("", line + "\n")


def test_a_bug_keeps_its_traceback_and_debug_shows_every_error(monkeypatch):
    monkeypatch.delenv("SELTRAIN_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_config_show", _raising(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main(["config", "show", "x.yaml"])
    monkeypatch.setattr(cli, "_config_show", _raising(PermissionError(errno.EACCES, "denied")))
    with pytest.raises(PermissionError):  # only a full disk is the user's to fix
        main(["config", "show", "x.yaml"])
    monkeypatch.setenv("SELTRAIN_DEBUG", "1")
    monkeypatch.setattr(cli, "_config_show", _raising(ConfigError("shown whole")))
    with pytest.raises(ConfigError, match="shown whole"):
        main(["config", "show", "x.yaml"])


@pytest.mark.faults
def test_sigterm_during_training_is_an_interrupt_with_status_143(monkeypatch, capsys):
    """A real SIGTERM to this process while ``train`` runs: Ctrl-C's path, one line, 143, and
    the default handler back afterwards (``config show`` does not opt in)."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this process already handles SIGTERM")
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def train(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts the sleep
        raise AssertionError("SIGTERM did not interrupt the command")

    monkeypatch.setattr(cli, "_train", train)
    assert main(["train", "x.yaml"]) == 143
    assert capsys.readouterr().err == "seltrain: terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


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


def test_a_closed_pipe_ends_quietly(tmp_path):
    """``seltrain tune --dry-run | head -1``: the reader leaves after one line; seltrain stops
    without a traceback and with the status a shell gives a command killed by SIGPIPE. The
    search lists 3,000 trials (about 135 kB, twice a pipe's 64 kB buffer), so the write that
    meets the closed pipe is certain, not a race."""
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
    seen, todo = 0, [build_parser()]
    while todo:
        p = todo.pop()
        assert p.allow_abbrev is False, p.prog
        seen += 1
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
    assert seen > 10


def test_report_help_lists_every_registered_analysis(capsys):
    """`seltrain report --help` offers every analysis the registry holds under --analyses,
    in the registry's order: the list is built from registry.NAMES (it once was typed out and
    lacked rotation and pwcca)."""
    from seltrain.analysis.registry import NAMES

    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal width
    analyses = text.split("--analyses NAMES also run", 1)[1].split("--analysis-args", 1)[0]
    assert f"comma-separated from {', '.join(NAMES)}" in analyses, analyses
    assert {"rotation", "pwcca"} <= set(NAMES)


def test_no_benchmark_script_takes_abbreviations():
    """The benchmarks' own parsers refuse abbreviations too (read with ast: they import
    heavy packages at the top)."""
    import ast
    import glob

    calls = []
    for path in sorted(glob.glob(os.path.join(REPO, "benchmarks", "*.py"))):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "ArgumentParser":
                kw = {k.arg: k.value for k in node.keywords}
                calls.append((os.path.basename(path), isinstance(kw.get("allow_abbrev"),
                              ast.Constant) and kw["allow_abbrev"].value is False))
    assert len(calls) >= 10 and all(ok for _, ok in calls), calls
