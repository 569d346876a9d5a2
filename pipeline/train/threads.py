"""How many torch threads the process that trains uses (teacher training and student segments).

Precompute runs on Dask worker processes, each with ``compute.threads_per_worker`` threads (set by
:class:`pipeline.precompute.worker.WorkerSetup`; an embedded cluster's ``workers: auto`` makes
workers x threads = cores). Training runs in *one* process, which should then use every core it
may run on, not the one thread a demo pinned for the Dask stage. Precedence:

1. ``compute.train_threads`` in the stage config (or ``--set compute.train_threads=N``);
2. ``$OMP_NUM_THREADS`` set by the user: torch already follows it, so it is left alone;
3. the cores available to this process (``os.sched_getaffinity``: honours taskset / cgroups
   cpusets, unlike ``os.cpu_count``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

import torch

from pipeline._cores import available_cores

log = logging.getLogger(__name__)


def train_thread_count(configured: int | None, environ: Mapping[str, str] = os.environ) -> int | None:
    """The torch thread count for training, by the module's precedence; None: leave torch as it is."""
    if configured:
        return int(configured)
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None
    return available_cores()


@contextlib.contextmanager
def train_threads(configured: int | None) -> Iterator[int]:
    """Use :func:`train_thread_count` torch threads inside the block (the count before is restored
    after it, so an in-process caller keeps its own setting); yields the count in use."""
    before = torch.get_num_threads()
    wanted = train_thread_count(configured)
    if wanted is not None and wanted != before:
        torch.set_num_threads(wanted)
    source = "compute.train_threads" if configured else ("$OMP_NUM_THREADS" if wanted is None else "available cores")
    log.debug("training with %d torch thread(s) (%s)", torch.get_num_threads(), source)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
