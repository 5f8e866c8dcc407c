"""The import graph of the package: no loops, and no import from a lower layer to a higher one.

Layers, lowest first; a module may import its own layer and the layers below it. The executor
knows the method contract only; the method modules (declarations, tensor functions and their
typed Python calls) stand above it and the registry above them. Modules not listed (the demo)
are not checked yet.
"""

from __future__ import annotations

import ast
from pathlib import Path

import realignkit

PACKAGE = Path(realignkit.__file__).parent
LAYERS = [
    ["errors", "_version"],
    ["ops", "chat"],  # pure: tensor math, and the chat format of every pass
    ["checkpoint"],
    ["calib", "plots", "train", "eval"],
    ["methods.base"],
    ["execute"],
    ["methods"],  # every method module
    ["methods.registry"],
    ["api", "sweep", "tuning", "cli"],
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
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
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
        if mine is None:
            continue
        for target in imports_of(path):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                offences.append(f"{module} imports {target}")
    assert offences == []
