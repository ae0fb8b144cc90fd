"""Imports point downward: every import of our packages, read with `ast` (those inside functions too),
fails this test when it goes up or sideways a layer, or closes a cycle between modules.

The layers, lowest first (docs/architecture.md): a library module may import its own package and the
layers strictly below its own. A package's front door (`__main__.py`, `cli.py`) may also hand off upward
(`python -m train --evaluate` runs `classify`), since nothing imports a front door but `python -m` and
other front doors. `scripts/` and `tests/` sit above everything and may import anything. Cycles are
checked between modules (a front door included): two modules that import each other, directly or
round a loop, cannot be read or changed one at a time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "fsutil": 0,
    "hostinfo": 0,
    "models": 1,
    "imagedata": 2,
    "train": 3,
    "export": 3,
    "classify": 4,
    "serve": 5,
    "client": 5,
    "benchmarks": 6,
}
FRONT_DOORS = ("__main__", "cli")


def module_of(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(root: Path, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(module, line) for every import in `path` of a module in `known` (the deepest one the import names)."""
    module = module_of(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name, node.lineno
                break


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported module: line} for every module of the layered packages under `root`."""
    paths = [p for top in LAYERS if (root / top).is_dir() for p in (root / top).rglob("*.py")]
    known = {module_of(root, p) for p in paths}
    return {module_of(root, p): dict(imported_modules(root, p, known)) for p in paths}


def layer_violations(root: Path) -> list[str]:
    found = []
    for module, imports in sorted(import_graph(root).items()):
        top, front_door = module.split(".")[0], module.rpartition(".")[2] in FRONT_DOORS
        for target, line in sorted(imports.items()):
            other = target.split(".")[0]
            if other != top and LAYERS[other] >= LAYERS[top] and not front_door:
                where = "above" if LAYERS[other] > LAYERS[top] else "beside"
                found.append(f"{module} (line {line}) imports {target}, a layer {where} {top}")
    return found


def import_cycles(root: Path) -> list[list[str]]:
    """Each group of modules that import one another round a loop (Tarjan's strongly connected components)."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            if group:
                cycles.append(sorted([node, *group]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_every_import_points_down():
    assert layer_violations(ROOT) == []


def test_no_module_imports_round_a_loop():
    assert import_cycles(ROOT) == []


def test_every_package_has_a_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "scripts"}
    assert packages == set(LAYERS)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_finds_upward_sideways_and_circular_imports(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "models/__init__.py": "",
            "models/resnet.py": "def f():\n    from export import runners\n",  # upward, inside a function
            "export/__init__.py": "",
            "export/runners.py": "from train.run import x\n",  # beside
            "train/__init__.py": "",
            "train/run.py": "import models\nfrom . import loop\n",
            "train/loop.py": "from .run import f\n",  # train.run <-> train.loop
            "train/cli.py": "import classify.weights\n",  # a front door hands off upward: allowed
            "classify/__init__.py": "",
            "classify/weights.py": "from train import run\n",  # downward: allowed
        },
    )
    assert layer_violations(root) == [
        "export.runners (line 1) imports train.run, a layer beside export",
        "models.resnet (line 2) imports export.runners, a layer above models",
    ]
    assert import_cycles(root) == [["train.loop", "train.run"]]
