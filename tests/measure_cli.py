"""Run ``realignkit ARGS`` and report its peak RSS and the bytes it read and wrote.

Used by ``tests/test_plan.py``: the report goes to stderr as one ``MEASURED {json}`` line.
Bytes are the read/write system-call counts of ``/proc/self/io`` (``rchar``/``wchar``,
whether or not the page cache served them), counted from after the CLI's own imports.
"""

from __future__ import annotations

import atexit
import json
import sys
from pathlib import Path

from realignkit.cli import main


def io_counts() -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


def report(start: tuple[int, int]) -> None:
    read, written = io_counts()
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child of a 2 GB test process
    # would report 2 GB whatever it ran.
    status = Path("/proc/self/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    rss *= 1024
    figures = {"rss": rss, "read": read - start[0], "written": written - start[1]}
    sys.__stderr__.write("MEASURED " + json.dumps(figures) + "\n")


if __name__ == "__main__":
    atexit.register(report, io_counts())
    main(sys.argv[1:])
