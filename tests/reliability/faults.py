"""Worker faults for the reliability suite, installed into the precompute task's test seam.

Dask imports this file in every worker process it starts (a worker preload, given to the
``mkd-pipeline`` child as ``DASK_DISTRIBUTED__WORKER__PRELOAD``, see :func:`fault_env`); its
``dask_setup`` replaces ``pipeline.precompute.task.after_shard_read`` with a hook that reads the
fault spec from ``$MKD_TEST_FAULT``:

``kill:SHARD`` / ``hang:SHARD``: the task of shard SHARD SIGKILLs its worker process / sleeps
forever, after reading the shard. ``...:SHARD:DIR``: only once per (shard, view epoch),
remembered by a marker file in DIR (a restarted worker preloads this file again).
``wait:SHARD:DIR``: the task of shard SHARD creates ``DIR/waiting-SHARD-E`` and waits until
``DIR/release`` exists (a test holds a precompute in flight for as long as it needs).
``nolinks:DIR``: the worker's filesystem has no hard links: ``os.link`` raises EPERM (as Linux
does there) and leaves a ``DIR/link-refused-*`` file per call. Several faults: comma-separated.

Dask loads the file by path, so it imports nothing from ``tests``.
"""

from __future__ import annotations

import errno
import os
import signal
import tempfile
import time
from pathlib import Path

from pipeline.precompute import task

SPEC_VAR = "MKD_TEST_FAULT"


def fault_env(spec: str) -> dict[str, str]:
    """The environment that makes the CLI's Dask workers inject the faults of ``spec``."""
    return {"DASK_DISTRIBUTED__WORKER__PRELOAD": str(Path(__file__).resolve()), SPEC_VAR: spec}


def inject(t: task.PartitionTask) -> None:
    """Kill or hang this worker if a fault of ``$MKD_TEST_FAULT`` names the task's shard."""
    for spec in filter(None, os.environ.get(SPEC_VAR, "").split(",")):
        kind, shard, *marker = spec.split(":", 2)
        if kind == "nolinks" or shard != t.shard:
            continue
        if kind == "wait":
            open(os.path.join(marker[0], f"waiting-{t.shard}-{t.view_epoch}"), "w").close()
            while not os.path.exists(os.path.join(marker[0], "release")):
                time.sleep(0.05)
            continue
        if marker:
            flag = os.path.join(marker[0], f"{kind}-{t.shard}-{t.view_epoch}")
            if os.path.exists(flag):
                continue
            open(flag, "w").close()
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "hang":
            time.sleep(10**6)


def refuse_links(marker_dir: str) -> None:
    """Make ``os.link`` fail as on a filesystem without hard links, noting each call in ``marker_dir``."""

    def link(src, dst, *a, **kw):
        tempfile.mkstemp(prefix="link-refused-", dir=marker_dir)
        raise OSError(errno.EPERM, "Operation not permitted (test: no hard links)", str(src), None, str(dst))

    os.link = link


def dask_setup(worker) -> None:
    """Dask's preload entry point, run in each worker process as it starts."""
    task.after_shard_read = inject
    for spec in filter(None, os.environ.get(SPEC_VAR, "").split(",")):
        if spec.startswith("nolinks:"):
            refuse_links(spec.split(":", 1)[1])
