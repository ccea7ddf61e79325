"""The platform's packages import each other in layers, never in a circle.

Library modules only; a package's ``__main__`` is its command line, the top of the stack, and may
use anything (``python -m pipeline demo`` runs the whole system). Reading order, bottom up:
core, etl (raw contract, feature computation, layout), expectations and features (both on etl's
contract), pipeline (sequences etl and expectations), training, serving.
"""

from __future__ import annotations

import ast
import graphlib
import tomllib

from helpers import ROOT

PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]


def imports_between_packages() -> dict[str, dict[str, list[str]]]:
    """{package: {imported package: [modules of the first that import it]}}, entry points left out."""
    graph: dict[str, dict[str, list[str]]] = {package: {} for package in PACKAGES}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__main__.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in graph and top != package:
                        graph[package].setdefault(top, []).append(str(path.relative_to(ROOT)))
    return graph


def test_no_two_packages_import_each_other_even_through_others():
    graph = imports_between_packages()
    try:
        list(graphlib.TopologicalSorter({p: set(deps) for p, deps in graph.items()}).static_order())
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        edges = [f"{a} -> {b} (in {', '.join(sorted(set(graph[a][b])))})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("packages import each other in a circle:\n  " + "\n  ".join(edges)) from None


def test_the_feature_computation_depends_on_nothing_but_core():
    """etl is the one definition every other layer reads: it must not reach up into validation,
    sequencing or serving."""
    assert set(imports_between_packages()["etl"]) <= {"core"}
