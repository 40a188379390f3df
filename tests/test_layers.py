"""The layer contract (issue 13, part 3): smtpfw's modules form layers, each
importing only its own layer and the ones below, and no import circle.

    cli       argv -> a command -> its report rendered -> exit code
    commands  one function per subcommand, returning a report object
    services  settings, lint engine, replay I/O, dry-run, trace, ruleset tests, server
    core      rule language, engine, policy, conversation core, checks, ...

Imports are read from the source (``ast``), inside functions too, so a
lazy import cannot hide an upward one.  The checker is tested on a
synthetic package below: an upward import or a circle there fails it, so
the same would fail for smtpfw.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Top to bottom.  A module is in the layer of the longest prefix naming it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("smtpfw.cli", "smtpfw.cli_parser", "smtpfw.__main__", "smtpfw.workbench")),
    ("commands", ("smtpfw.commands",)),
    ("services", ("smtpfw.settings", "smtpfw.lint", "smtpfw.lint_output", "smtpfw.docs", "smtpfw.server",
                  "smtpfw.replay.dryrun", "smtpfw.replay.trace", "smtpfw.replay.rulestests",
                  "smtpfw.replay.postfix", "smtpfw.replay.records", "smtpfw.replay.livedns",
                  "smtpfw.replay.build")),
    ("core", ("smtpfw",)),
]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (anywhere in it)."""
    mods = modules(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[:len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)   # `from pkg import module`
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def layer_of(module: str, layers=LAYERS) -> int:
    """Index of the module's layer (0 = top)."""
    best = None
    for index, (_name, prefixes) in enumerate(layers):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (index, len(p))
    if best is None:
        raise LookupError(f"{module} is in no layer")
    return best[0]


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    out = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if layer_of(dep, layers) < layer_of(module, layers):
                out.append(f"{module} ({layers[layer_of(module, layers)][0]}) imports "
                           f"{dep} ({layers[layer_of(dep, layers)][0]})")
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# ---- smtpfw keeps the contract ---------------------------------------------------------

@pytest.fixture(scope="module")
def graph():
    return import_graph(REPO, "smtpfw")


def test_no_module_imports_a_layer_above_its_own(graph):
    assert upward_imports(graph) == []


def test_no_import_circle(graph):
    assert circles(graph) == []


def test_every_layer_prefix_names_a_module(graph):
    """A renamed module must not leave the contract checking nothing."""
    for _name, prefixes in LAYERS:
        for p in prefixes:
            assert any(m == p or m.startswith(p + ".") for m in graph), p


def test_commands_print_nothing():
    """Commands return reports (the CLI renders them): no print(), no sys.stdout or sys.stderr."""
    found = []
    for path in sorted((REPO / "smtpfw" / "commands").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name) and node.id == "print":
                found.append(f"{path.name}:{node.lineno}: print")
            elif (isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr")
                  and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                found.append(f"{path.name}:{node.lineno}: sys.{node.attr}")
    assert found == []


def test_every_package_is_installed():
    """pyproject.toml lists the packages by name: a new folder of modules must be added there."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "smtpfw").rglob("*.py")}
    missing = sorted(folders - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"


# ---- the checker catches what it should ---------------------------------------------------

SYNTHETIC = [("top", ("pkg.top",)), ("mid", ("pkg.mid",)), ("bottom", ("pkg",))]


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, text in {"__init__.py": "", **files}.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path, "pkg")


def test_checker_finds_an_upward_import_even_inside_a_function(tmp_path):
    graph = _package(tmp_path, {
        "top.py": "from pkg import mid\n",
        "mid/__init__.py": "",
        "mid/work.py": "def f():\n    from pkg.top import main\n",      # upward, lazily
        "low.py": "from . import helpers\n",
        "helpers.py": "",
    })
    assert graph["pkg.low"] == {"pkg", "pkg.helpers"}                       # relative import resolved
    assert upward_imports(graph, SYNTHETIC) == ["pkg.mid.work (mid) imports pkg.top (top)"]


def test_checker_finds_a_circle(tmp_path):
    graph = _package(tmp_path, {"a.py": "import pkg.b\n", "b.py": "from pkg.c import x\n",
                                "c.py": "def f():\n    from pkg import a\n", "d.py": "import pkg.a\n"})
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_checker_accepts_downward_imports(tmp_path):
    graph = _package(tmp_path, {"top.py": "import pkg.mid\nimport pkg.low\n", "mid.py": "import pkg.low\n",
                                "low.py": "import os\n"})
    assert upward_imports(graph, SYNTHETIC) == [] and circles(graph) == []
