"""The package's folders are layers: every import between folders points down, and no import cycles.

Order, from the ground up (a folder may import its own layer's modules and any lower layer's):

    root (config, store, display, progress, errors) < schedules < models < measure < pruning < experiment
        < tuning | search | speed < cli | dashboard

Folders that share a rank (``tuning``, ``search``, ``speed``; ``cli``, ``dashboard``) do not import each
other. ``atp_viz/__init__.py`` is the public API over all layers and ``atp_viz/__main__.py`` runs the CLI:
no module of the package imports either. Streamlit is imported under ``dashboard/`` only (and by the
pages, ``app.py`` and ``home.py``, which live outside the package). Imports inside functions and under
``TYPE_CHECKING`` count: a lazy import still couples the layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "atp_viz"
LAYERS: tuple[tuple[str, ...], ...] = (
    ("",),  # the package root: config, store, display, progress, errors
    ("schedules",),
    ("models",),
    ("measure",),
    ("pruning",),
    ("experiment",),
    ("tuning", "search", "speed"),
    ("cli", "dashboard"),
)
RANK = {folder: rank for rank, folders in enumerate(LAYERS) for folder in folders}
FACADES = ("atp_viz", "atp_viz.__main__")  # the public API and ``python -m atp_viz``: above every layer
STREAMLIT_FOLDERS = ("dashboard",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """Every module (of the package, or outside it by top-level name) that ``path`` imports, anywhere in it."""
    known = set(known)
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:  # ``from a import b``: the module a.b if it is one, else a
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def folder(module: str) -> str:
    """``atp_viz.pruning.cached`` -> ``pruning``; a module at the package root -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else ""


def layer_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Imports of package modules that point up, sideways across folders of one rank, or into a facade."""
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if not (target == "atp_viz" or target.startswith("atp_viz.")) or source in FACADES:
                continue
            if target in FACADES:
                bad.append(f"{source} imports the facade {target}")
                continue
            a, b = folder(source), folder(target)
            if a == b:
                continue
            if a not in RANK or b not in RANK:
                bad.append(f"{source} -> {target}: folder {a or b!r} has no layer in LAYERS")
            elif RANK[b] > RANK[a]:
                bad.append(f"{source} ({a or 'root'}) imports {target} ({b}), a higher layer")
            elif RANK[b] == RANK[a]:
                bad.append(f"{source} ({a}) imports {target} ({b}), a folder of the same rank")
    return bad


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Import cycles among the package's modules (each found once, from its first module)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_module_has_a_layer() -> None:
    folders = {folder(name) for name in package_modules()}
    assert folders <= set(RANK), f"folders without a layer: {sorted(folders - set(RANK))}"
    assert {"", "schedules", "models", "measure", "pruning", "experiment", "cli", "dashboard"} <= folders


def test_imports_between_folders_point_down() -> None:
    assert layer_violations(import_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_streamlit_is_imported_by_the_dashboard_only() -> None:
    graph = import_graph()
    users = sorted(m for m, targets in graph.items() if any(t.split(".")[0] == "streamlit" for t in targets))
    assert users and all(folder(m) in STREAMLIT_FOLDERS for m in users), users


@pytest.mark.parametrize(
    "source, target",
    [
        ("atp_viz.schedules.published", "atp_viz.models.loading"),  # up one layer
        ("atp_viz.config", "atp_viz.experiment.workbench"),  # root up to experiment
        ("atp_viz.tuning.findbest", "atp_viz.search.study"),  # sideways within one rank
        ("atp_viz.measure.metrics", "atp_viz"),  # into the public API
    ],
)
def test_the_check_finds_an_import_that_breaks_the_order(source: str, target: str) -> None:
    graph = {name: set(targets) for name, targets in import_graph().items()}
    graph[source].add(target)
    assert [v for v in layer_violations(graph) if v.startswith(source)]


def test_the_check_finds_a_cycle() -> None:
    graph = {name: set(targets) for name, targets in import_graph().items()}
    graph["atp_viz.schedules.published"].add("atp_viz.schedules.methods")  # methods imports published
    assert cycles(graph)
