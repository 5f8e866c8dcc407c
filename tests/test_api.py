"""The public Python API: every exported name resolves, and `import realignkit` stays light."""

from __future__ import annotations

import subprocess
import sys

import realignkit


def test_every_export_resolves() -> None:
    for name in realignkit.__all__:
        assert getattr(realignkit, name) is not None, name
    assert callable(realignkit.resta) and callable(realignkit.evaluate)
    assert "resta" in realignkit.load_recipes()


def test_import_does_not_pull_torch() -> None:
    code = "import sys, realignkit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
