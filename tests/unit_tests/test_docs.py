"""The documentation stands alone inside the repository.

- Every relative link in README.md, CONTRIBUTING.md and docs/*.md resolves to a file or folder
  inside the repository, and a ``#fragment`` names a heading of the linked page.
- Every repository path the pages quote in backticks (``configs/quickstart.yaml``, a path in a
  command such as ``python benchmarks/bench_step.py``) exists; ``{a,b}`` and ``*`` expand as in
  a shell, and ``<...>`` and ``NAME`` stand for any name but must match something. A test
  named as ``tests/FILE.py::test_name`` must be defined in that file.
- No file of the repository points outside it, to a shared folder beside the checkout or the
  METHODS.md in it: docs/METHODS.md is the one copy of the science.
- The README stays a front door: under 200 lines, and it links every page in docs/.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess

import pytest

from helpers import REPO

PAGES = ["README.md", "CONTRIBUTING.md",
         *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]

# Where a quoted path starts: the repository's own top-level folders and files.
TOP_FOLDERS = (".ci", "benchmarks", "cluster", "configs", "docs", "seltrain", "tests", "tune")
TOP_FILES = ("CONTRIBUTING.md", "Makefile", "README.md", "pyproject.toml", "requirements.lock")
# Quoted paths that a documented command writes, so a fresh checkout does not hold them.
WRITTEN_BY_A_COMMAND = {
    "benchmarks/results/gpu_check.json": "benchmarks/gpu_check.py saves it on a GPU",
    "benchmarks/device/wheels/": "benchmarks/device/prepare.sh downloads the wheels into it",
}
# Written with parts, so that this file does not hold the strings it looks for.
OUTSIDE = ("..", "/shared")
FORBIDDEN = ("".join(OUTSIDE), "shared/" + "METHODS.md")

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SPAN = re.compile(r"(`+)(.+?)\1", re.S)


def read(page: str) -> str:
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[str]:
    """Link targets outside code: [text](target)."""
    prose = SPAN.sub("", FENCE.sub("", text))
    return [m.group(1) for m in LINK.finditer(prose)]


def quoted_paths(text: str) -> list[str]:
    """Words of inline code and fenced blocks that name a repository path."""
    code = [m.group(0) for m in FENCE.finditer(text)]
    code += [m.group(2) for m in SPAN.finditer(FENCE.sub("", text))]
    found = []
    for chunk in code:
        for word in chunk.split():
            word = word.strip("'\"(),;:")
            if word in TOP_FILES or ("/" in word and word.split("/")[0] in TOP_FOLDERS):
                found.append(word)
    return found


def expand(pattern: str) -> list[str]:
    """``a{b,c}d`` -> [abd, acd], as a shell does."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [p for alt in m.group(1).split(",")
            for p in expand(pattern[:m.start()] + alt + pattern[m.end():])]


def path_exists(path: str) -> bool:
    path, _, test = path.partition("::")  # a pytest node id: the file must define the test
    pattern = re.sub(r"<[^>]*>|(?<![A-Za-z])NAME(?![A-Za-z])", "*", path)
    for one in expand(pattern):
        found = glob.glob(os.path.join(REPO, one))
        if not found:
            return False
        if test and not all(re.search(rf"^\s*def {re.escape(test)}\(", read(f), re.M)
                            for f in found):
            return False
    return True


def link_problem(page: str, target: str) -> str | None:
    """Why ``target``, a link on ``page``, does not resolve inside the repository (or None)."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
        return None
    path, _, fragment = target.partition("#")
    here = os.path.dirname(os.path.join(REPO, page))
    dest = os.path.realpath(os.path.join(here, path)) if path else os.path.join(REPO, page)
    if os.path.commonpath([dest, os.path.realpath(REPO)]) != os.path.realpath(REPO):
        return f"{target}: outside the repository"
    if not os.path.exists(dest):
        return f"{target}: no such file or folder"
    if fragment and dest.endswith(".md"):
        with open(dest, encoding="utf-8") as f:
            if fragment not in anchors(f.read()):
                return f"{target}: no heading '#{fragment}' in {os.path.relpath(dest, REPO)}"
    return None


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves_inside_the_repository(page):
    text = read(page)
    assert links(text), f"{page} links nowhere"
    problems = [p for t in links(text) if (p := link_problem(page, t))]
    assert not problems, f"{page}: " + "; ".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_every_quoted_repository_path_exists(page):
    missing = sorted({p for p in quoted_paths(read(page))
                      if p not in WRITTEN_BY_A_COMMAND and not path_exists(p)})
    assert not missing, f"{page} quotes paths that do not exist: {missing}"


def test_the_checks_catch_a_broken_link_and_a_missing_path():
    page = "docs/training.md"
    assert link_problem(page, "data.md#datasets") is None
    assert link_problem(page, "dta.md") == "dta.md: no such file or folder"
    assert "no heading" in link_problem(page, "data.md#no-such-heading")
    assert "outside the repository" in link_problem(page, "../../README.md")
    assert quoted_paths("run `python benchmarks/bench_step.py --clock cpu` and `seltrain tune`"
                        ) == ["benchmarks/bench_step.py"]
    assert path_exists("configs/deepspeed/zero{0,1,2}_bf16.json")
    assert not path_exists("configs/deepspeed/zero{0,1,3}_bf16.json")
    assert path_exists("tune/NAME.yaml") and not path_exists("tune/NAME.yml")
    assert path_exists("tests/unit_tests/test_docs.py::test_readme_is_a_front_door")
    assert not path_exists("tests/unit_tests/test_docs.py::test_readme")
    assert slug("Sweeps: `report --analyses`") == "sweeps-report---analyses"


def repository_files() -> list[str]:
    """Tracked files and untracked ones git does not ignore; without git, every file outside
    the folders that hold installs, caches and outputs."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True, timeout=60).stdout
        return [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", "runs", ".torch_ext", "build"}
        found = []
        for folder, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in skip]
            found += [os.path.relpath(os.path.join(folder, f), REPO) for f in files]
        return found


def test_no_file_points_outside_the_repository():
    offenders = []
    for rel in repository_files():
        path = os.path.join(REPO, rel)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        for bad in FORBIDDEN:
            if bad.encode() in data:
                offenders.append(f"{rel} ({bad})")
    assert not offenders, "these files refer outside the repository: " + ", ".join(offenders)


def test_readme_is_a_front_door():
    text = read("README.md")
    assert len(text.splitlines()) < 200
    linked = {os.path.normpath(t.partition("#")[0]) for t in links(text)}
    pages = {p for p in PAGES if p.startswith("docs" + os.sep)}
    assert pages and pages <= linked, f"README does not link {sorted(pages - linked)}"
