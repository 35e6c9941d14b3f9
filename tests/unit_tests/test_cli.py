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
