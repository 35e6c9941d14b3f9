"""The package's shape (seltrain/ as a whole): imports point one way, down the levels below, and
no module is over 600 lines but the corruption catalogue.

Every import of every module is read from its source with ``ast``: at module level and inside
functions (the lazy imports), relative ones, and modules imported by name
(``__import__``/``importlib.import_module``, and the module names written out in a module that
imports by a computed name, as the CLI does for its subcommands). A unit is a top-level module
or a subpackage (``seltrain.data``, ``seltrain.analysis``, ...); imports inside a unit are its
own business.
"""
from __future__ import annotations

import ast
import os

import pytest

from helpers import REPO

PACKAGE = os.path.join(REPO, "seltrain")

# A unit may import units of its own level or of a lower one, never of a higher one; within a
# level the imports must not form a cycle.
LEVELS = [
    # 0. The vocabulary every module may use: the errors (one line and an exit code each), the
    #    typed recipe (its YAML reader, its alpha schedule), the one way to write a file, RNG
    #    state, the plain-data unpickler, the tests' fault hook, the package's version
    #    (seltrain/__init__.py).
    {"seltrain", "errors", "config", "atomic", "rng", "pickles", "fault_injection",
     "recipe_yaml", "alpha_schedule"},
    # 1. The process: its place among the ranks (process groups, collectives), the metrics sink
    #    it writes, its hold on a run folder (the lock reads the metrics it guards), the Ray
    #    cluster it joins (a search's and the analyses' fan-out's).
    {"distributed", "metrics", "runlock", "raysession"},
    # 2. What an experiment is made of, each usable alone: the SI math, the probes that read
    #    units, the networks, the data, the optimizer and its schedules.
    {"selectivity", "probes", "models", "data", "optim"},
    # 3. A network on disk and on its devices: checkpoints (which rebuild a network from its
    #    recipe) and the DDP/DeepSpeed engine (which saves and restores through them).
    {"checkpoint", "engine"},
    # 4. Reading a trained network: the analyses. They sit below the trainer, which may run
    #    one each epoch (orientation tracking); an analysis never needs the loop.
    {"analysis"},
    # 5. The loop.
    {"trainer"},
    # 6. Many runs: the alpha searches (Ray Tune) and the report on an experiment, which can
    #    run the analyses on every trial (report_analyses) and groups a search over other
    #    keys (report_groups).
    {"tuning", "report", "report_analyses", "report_groups"},
    # 7. The command line, which reaches every area.
    {"cli", "__main__"},
]
LEVEL = {unit: i for i, units in enumerate(LEVELS) for unit in units}

# What the analyses never import, whatever the levels say: they read checkpoints, never the
# loop or what drives it.
NOT_FROM_ANALYSIS = ("seltrain.trainer", "seltrain.tuning", "seltrain.report", "seltrain.cli")

LONGEST = 600
LONG_ALLOWED = {"analysis/corruptions.py"}  # the corruption catalogue: 19 corruptions as data


def modules(root: str) -> dict[str, str]:
    """{dotted module name: path} of every .py under ``root`` (a package folder)."""
    base = os.path.basename(root)
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), root)[:-3].split(os.sep)
                name = ".".join([base, *rel])
                found[name[:-len(".__init__")] if name.endswith(".__init__") else name] = \
                    os.path.join(folder, f)
    return found


def imports_of(root: str) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, every way a module can import."""
    mods = modules(root)
    out = {}
    for name, path in mods.items():
        is_package = path.endswith("__init__.py")
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        got: set[str] = set()

        def resolve(target: str) -> None:
            while target and target not in mods:  # seltrain.x.Name -> seltrain.x
                target = target.rpartition(".")[0]
            if target:
                got.add(target)

        dynamic = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    resolve(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = name.split(".")
                    parts = parts[:len(parts) - node.level + (1 if is_package else 0)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    resolve(full if full in mods else base)
            elif isinstance(node, ast.Call):
                fn = node.func
                called = fn.id if isinstance(fn, ast.Name) else \
                    fn.attr if isinstance(fn, ast.Attribute) else None
                if called in ("__import__", "import_module") and node.args:
                    arg = node.args[0]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        resolve(arg.value)
                    else:
                        dynamic = True
        if dynamic:  # imports by a computed name: the module names it spells out count
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and node.value in mods:
                    got.add(node.value)
        got.discard(name)
        out[name] = got
    return out


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[0] if len(parts) == 1 else parts[1]


def upward_imports(graph: dict[str, set[str]], levels: dict[str, int]) -> list[str]:
    """Each import that runs against the levels, as 'importer -> imported (level a < b)'."""
    bad = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            a, b = unit(mod), unit(dep)
            if a != b and levels[a] < levels[b]:
                bad.append(f"{mod} -> {dep} (level {levels[a]} < {levels[b]})")
    return bad


def unit_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles among units (a imports b, b imports a, directly or through others)."""
    edges: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        for dep in deps:
            if unit(mod) != unit(dep):
                edges.setdefault(unit(mod), set()).add(unit(dep))
    cycles, done = [], set()

    def visit(node, path):
        if node in path:
            cycle = path[path.index(node):]
            if frozenset(cycle) not in done:
                done.add(frozenset(cycle))
                cycles.append(cycle + [node])
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, path + [node])

    for start in sorted(edges):
        visit(start, [])
    return cycles


GRAPH = imports_of(PACKAGE)


def test_every_unit_has_a_level():
    units = {unit(m) for m in GRAPH}
    assert units - set(LEVEL) == set(), "give these modules a level in LEVELS (and say why)"
    assert set(LEVEL) - units == set(), "LEVELS names modules that no longer exist"


def test_no_module_imports_one_of_a_higher_level():
    assert upward_imports(GRAPH, LEVEL) == []


def test_no_two_units_import_each_other():
    assert unit_cycles(GRAPH) == []


def test_the_analyses_never_import_the_loop_or_what_drives_it():
    bad = [f"{m} -> {d}" for m, deps in sorted(GRAPH.items()) if unit(m) == "analysis"
           for d in sorted(deps) if d.startswith(NOT_FROM_ANALYSIS)]
    assert bad == []


def test_the_imports_are_really_read():
    """The reader sees what the package is known to import: a lazy import inside a function
    (the trainer's orientation hook), ``from seltrain import x`` as the module x, and the CLI's
    subcommand modules, imported by a computed name."""
    assert "seltrain.analysis.orientation" in GRAPH["seltrain.trainer"]
    assert "seltrain.distributed" in GRAPH["seltrain.engine"]
    assert {"seltrain.data.commands", "seltrain.tuning", "seltrain.report",
            "seltrain.analysis.commands"} <= GRAPH["seltrain.cli"]


def _write(root, files: dict[str, str]) -> str:
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return os.path.join(root, "seltrain")


def test_the_check_finds_an_upward_import_wherever_it_hides(tmp_path):
    root = _write(str(tmp_path), {
        "seltrain/__init__.py": "",
        "seltrain/errors.py": "import importlib\nSUB = ('seltrain.cli',)\n\n\n"
                              "def load(name):\n    return importlib.import_module(name)\n",
        "seltrain/config.py": "from seltrain import errors\n",
        "seltrain/models/__init__.py": "def build():\n    import seltrain.trainer.loop\n",
        "seltrain/trainer.py": "from seltrain.config import load\n",
        "seltrain/analysis/__init__.py": "",
        "seltrain/analysis/plots.py": "def figure():\n    from ..trainer import Trainer\n",
        "seltrain/analysis/target.py": "from . import plots\nfrom seltrain.models import build\n",
        "seltrain/cli.py": "from seltrain import errors\n",
    })
    graph = imports_of(root)
    assert graph["seltrain.analysis.plots"] == {"seltrain.trainer"}
    assert graph["seltrain.analysis.target"] == {"seltrain.analysis.plots", "seltrain.models"}
    levels = {"seltrain": 0, "errors": 0, "config": 0, "models": 2, "analysis": 4, "trainer": 5,
              "cli": 7}
    assert upward_imports(graph, levels) == [
        "seltrain.analysis.plots -> seltrain.trainer (level 4 < 5)",
        "seltrain.errors -> seltrain.cli (level 0 < 7)",
        "seltrain.models -> seltrain.trainer (level 2 < 5)",
    ]
    assert unit_cycles({"seltrain.config": {"seltrain.errors"},
                        "seltrain.errors": {"seltrain.config.x"}}) == [
        ["config", "errors", "config"]]


def test_no_file_is_over_600_lines_but_the_corruption_catalogue():
    long = {}
    for path in modules(PACKAGE).values():
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > LONGEST:
            long[os.path.relpath(path, PACKAGE)] = n
    assert set(long) <= LONG_ALLOWED, long


@pytest.mark.parametrize("rel", sorted(LONG_ALLOWED))
def test_the_allowed_long_file_exists(rel):
    assert os.path.isfile(os.path.join(PACKAGE, rel))
