"""How many cores this process may run on: the one count precompute (workers x threads) and
training (torch threads) size themselves by."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity``: honours taskset and cgroup cpusets,
    unlike ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
