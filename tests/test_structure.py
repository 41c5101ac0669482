"""The shape of the code (DESIGN.md §1): the sweep package's layers and the size of modules.

The sweep package is read with :mod:`ast` (nothing is imported): every ``import`` and
``from … import`` of every module, at any depth (inside functions too), relative or absolute,
that names ``kfac_bench.sweep`` or one of its modules is an arrow of the package's import graph.
``from kfac_bench.sweep import x`` is an arrow to the package itself (``__init__``), which runs
every module; so is ``import kfac_bench.sweep``. The graph must have no cycle, and no module may
import one on a higher layer than its own. The checker is tested on graphs that break each rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "kfac_bench" / "sweep"
# Lowest first; a module may import only modules on its own layer or a lower one.
LAYERS = ("spec", "plan", "worker", "backends", "scheduler", "display", "cli", "__init__")
MAX_LINES = 450  # "no module over ~400 lines" (DESIGN.md §1), with a margin


def package_imports(path: Path) -> set[str]:
    """The modules of the sweep package that ``path`` imports (``__init__`` for the package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against kfac_bench.sweep (its modules are flat)
                base = "kfac_bench" if node.level > 1 else "kfac_bench.sweep"
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [module]
            if module == "kfac_bench.sweep":  # ``from . import worker``: the package, and worker
                names += [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "kfac_bench.sweep":
                found.add("__init__")
            elif name.startswith("kfac_bench.sweep."):
                sub = name.removeprefix("kfac_bench.sweep.").split(".")[0]
                if (PACKAGE / f"{sub}.py").exists():
                    found.add(sub)
    found.discard(path.stem)
    return found


def import_graph() -> dict[str, set[str]]:
    return {p.stem: package_imports(p) for p in sorted(PACKAGE.glob("*.py"))}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search, each as ``[a, b, ..., a]``."""
    found: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def upward_imports(graph: dict[str, set[str]], layers: tuple[str, ...]) -> list[str]:
    """``a -> b`` for every import from a module to one on a higher layer."""
    rank = {name: i for i, name in enumerate(layers)}
    return [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if rank[target] > rank[module]
    ]


# ---------------------------------------------------------------------------------------------
# the checker itself


def test_the_checker_sees_cycles_and_upward_imports(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    layers = ("a", "b", "c")
    assert upward_imports({"a": {"c"}, "b": {"a"}, "c": {"a", "b"}}, layers) == ["a -> c"]
    module = tmp_path / "plan.py"
    module.write_text(
        "import os\nfrom kfac_bench import store\nfrom kfac_bench.sweep.spec import X\n"
        "def f():\n    from . import worker\n    from .display import Y\n"
        "    import kfac_bench.sweep.cli\n    from kfac_bench.sweep import Z\n"
    )
    assert package_imports(module) == {"spec", "worker", "display", "cli", "__init__"}


# ---------------------------------------------------------------------------------------------
# the sweep package


def test_every_sweep_module_has_a_layer():
    assert set(import_graph()) == set(LAYERS)


def test_sweep_package_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_sweep_modules_import_only_their_layer_or_below():
    graph = import_graph()
    assert upward_imports(graph, LAYERS) == []
    # the layers are really used: each module above the spec builds on the one below it
    for lower, upper in [("spec", "plan"), ("plan", "worker"), ("worker", "backends")]:
        assert lower in graph[upper], (upper, graph[upper])
    assert {"backends", "plan", "worker"} <= graph["scheduler"]
    assert {"display", "scheduler", "plan", "spec"} <= graph["cli"]


def test_only_the_cli_knows_argparse():
    """Below the CLI the sweep is configured by a frozen SweepOptions, not a Namespace."""
    users = set()
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if "argparse" in names:
                users.add(path.stem)
    assert users == {"cli"}


# ---------------------------------------------------------------------------------------------
# module size


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _too_long(paths: list[Path]) -> list[str]:
    return [f"{p.relative_to(REPO)} ({_lines(p)})" for p in paths if _lines(p) > MAX_LINES]


MODULES = sorted([*(REPO / "kfac_bench").rglob("*.py"), *(REPO / "analysis").rglob("*.py")])


def test_no_module_is_over_the_line_limit():
    assert _too_long(MODULES) == []
