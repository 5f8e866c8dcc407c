"""The machine a real-world run shares: the torch threads it takes, the memory it peaked at."""

from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path

log = logging.getLogger(__name__)


def set_threads(threads: str | int) -> int:
    """Give torch only the idle cores: threads that wait on a busy core stall every barrier.

    Measured on a 2-core machine with other busy processes (load 3-4): a training step took
    2.6 s with 1 thread and 1.8-13 s with 2, greedy decoding 15 s with 1 and 39 s with 2
    (OpenMP threads spinning while their partner is descheduled). ``auto`` keeps the cores
    not busy at start (all of them on an idle machine), measured over half a second.
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    wanted = cores - busy_cores() if threads == "auto" else int(threads)
    count = max(1, min(cores, wanted) if threads == "auto" else wanted)
    torch.set_num_threads(count)
    log.info("torch threads: %d of %d cores", count, cores)
    return count


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (Linux)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window: float = 0.5) -> int:
    """Cores other processes keep busy now, measured over ``window`` seconds.

    The one-minute load average would still count a job that just ended (the setup script
    run right before `realignkit demo`), and leave an idle core unused for the whole run.
    """
    first = _cpu_times()
    if first is None:
        return int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
    time.sleep(window)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return 0
    share = (second[0] - first[0]) / (second[1] - first[1])
    return int(share * (os.cpu_count() or 1) + 0.5)


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30) if os.uname().sysname == "Darwin" else peak / (1 << 20)
