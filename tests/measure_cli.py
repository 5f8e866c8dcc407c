"""Run ``realignkit ARGS`` and report its peak RSS and the bytes it read and wrote.

Used by ``tests/test_plan.py``: the report goes to stderr as one ``MEASURED {json}`` line.
Bytes are the read/write system-call counts of ``/proc/self/io`` (``rchar``/``wchar``,
whether or not the page cache served them), counted from after the CLI's own imports.
``fixed`` is the resident memory when the command first loads a model
(:func:`realignkit.modeling.load_causal_lm`), after its own imports: what a model stage
starts from (absent for commands that load none).
"""

from __future__ import annotations

import atexit
import json
import sys
from pathlib import Path
from typing import Any

import realignkit.modeling
from realignkit.cli import main

FIXED: list[int] = []


def vm(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return 1024 * next(int(x.split()[1]) for x in status.splitlines() if x.startswith(field))


def _recording(load: Any) -> Any:
    def first_load(*args: Any, **kwargs: Any) -> Any:
        if not FIXED:
            FIXED.append(vm("VmRSS"))
        return load(*args, **kwargs)

    return first_load


def record_fixed_cost() -> None:
    """Note the resident memory at the first model load: the modules that import
    ``load_causal_lm`` later get the recording one, those already imported are patched."""
    original = realignkit.modeling.load_causal_lm
    wrapped = _recording(original)
    for module in list(sys.modules.values()):
        if getattr(module, "load_causal_lm", None) is original:
            module.load_causal_lm = wrapped  # type: ignore[attr-defined]


def io_counts() -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


def report(start: tuple[int, int]) -> None:
    read, written = io_counts()
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child of a 2 GB test process
    # would report 2 GB whatever it ran.
    figures = {"rss": vm("VmHWM"), "read": read - start[0], "written": written - start[1]}
    if FIXED:
        figures["fixed"] = FIXED[0]
    sys.__stderr__.write("MEASURED " + json.dumps(figures) + "\n")


if __name__ == "__main__":
    record_fixed_cost()
    atexit.register(report, io_counts())
    main(sys.argv[1:])
