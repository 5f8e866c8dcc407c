"""The import graph of the package: no loops, and no import from a lower layer to a higher one.

Layers, lowest first; a module may import its own layer and the layers below it. The executor
knows the method contract only (``contract.py``); the method modules (declarations, tensor
functions and their typed Python calls) stand above it and the registry above them. Every
module of the package is in a layer (``__init__`` is the package's own face), and every folder
of it holds a band of layers that no other module's import crosses back: seen as one box, a
folder imports only what stands below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import realignkit

PACKAGE = Path(realignkit.__file__).parent
LAYERS = [
    ["errors", "_version"],
    ["ops", "chat"],  # pure: tensor math, and the chat format of every pass
    ["checkpoint", "data"],  # the readers of model files and of data files
    ["modeling"],  # loading a model to run it
    ["calib", "plots", "train", "eval"],
    ["contract"],
    ["execute"],
    ["methods"],  # every method module
    ["methods.registry"],
    ["api", "sweep", "tuning", "plan"],
    ["demo"],  # its worlds call the sweep
    ["cli"],  # its commands run the demos too
    ["__main__", "__init__"],  # the package's face: names handed on lazily from every layer
]


def layer_of(module: str) -> int | None:
    best = None
    for index, members in enumerate(LAYERS):
        for member in members:
            inside = module == member or module.startswith(member + ".")
            if inside and (best is None or len(member) > best[1]):
                best = (index, len(member))
    return None if best is None else best[0]


def imports_of(path: Path) -> set[str]:
    """The package modules ``path`` imports (dotted, without ``realignkit.``); ``from
    realignkit import NAME`` imports the module NAME where there is one, else the face."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "realignkit" and node.level == 0:
            for alias in node.names:
                module = (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").is_file()
                found.add(alias.name if module else "__init__")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("realignkit."):
                found.add(node.module.removeprefix("realignkit."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("realignkit."):
                    found.add(alias.name.removeprefix("realignkit."))
    return found


def test_no_import_goes_up_a_layer() -> None:
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        mine = layer_of(module)
        assert mine is not None, f"{module} is in no layer"
        for target in imports_of(path):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                offences.append(f"{module} imports {target}")
    assert offences == []


def module_graph() -> dict[str, set[str]]:
    """Every module of the package (dotted, ``realignkit`` for its ``__init__``) and the
    package modules it imports, anywhere in it (a function's lazy import included); ``from
    PACKAGE import NAME`` is an import of the module NAME where there is one."""
    paths = {
        ".".join(("realignkit", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): p
        for p in sorted(PACKAGE.rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    found.add(name if name in paths else node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[module] = {m for m in found if m in paths and m != module}
    return graph


def loops_of(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every loop a depth-first walk of ``graph`` closes (empty: the graph has none)."""
    state: dict[str, str] = {}
    loops: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                loops.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return loops


def test_no_import_loop() -> None:
    """No module reaches itself through imports, the demo's and the package's face included
    (a loop hidden in lazy imports still ties two modules into one)."""
    graph = module_graph()
    assert "realignkit.demo.real.report" in graph  # the walk sees the demo
    assert loops_of(graph) == []


def test_no_import_loop_between_folders() -> None:
    """Each top-level folder of the package seen as one box (``methods/`` with its registry,
    ``checkpoint/``, ``cli/``...): no two boxes import each other, however indirectly, so a
    folder never holds modules both below and above another part (the method contract lives
    beside the executor, not in ``methods/``, for this reason)."""

    def box(module: str) -> str:
        return ".".join(module.split(".")[:2])

    boxes: dict[str, set[str]] = {}
    for module, targets in module_graph().items():
        mine = boxes.setdefault(box(module), set())
        mine |= {box(t) for t in targets if box(t) != box(module)}
    for targets in list(boxes.values()):
        for target in targets:
            boxes.setdefault(target, set())
    assert {"realignkit.methods", "realignkit.execute", "realignkit.contract"} <= set(boxes)
    assert loops_of(boxes) == []
