"""Before any task runs, every worker checks that it sees the files the client will name to it.

Workers are handed paths and URIs (shards, teacher and student weights, the label store) that the
client resolved on its own machine. On a cluster whose workers do not share them, the first sign
used to be a task failing ("weights file not found", exit 3) after the cluster had started; a
worker that writes into a local directory of the store's name would even "succeed" where the
client never sees the partitions. So::

    fit = check_reach(cluster, precompute_needs(tasks))   # or probe_needs(task)

checks the resources and GPU placement (:func:`pipeline.precompute.cluster.check_resources`),
then runs :func:`worker_sees` on every worker that can take the tasks: each file must be there
with the size the client sees and its first byte readable; the store must hold a marker the
client has just written there (the same store, not a directory of the same name) and take a
file of the worker's own. A worker that cannot is named with the path, and :class:`ComputeError`
(exit 5) stops the stage before anything is submitted. Workers that join later are not checked.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pyarrow.fs as pafs

from pipeline._atomic import TMP_PREFIX
from pipeline.errors import ComputeError, StoreError
from pipeline.labels import paths
from pipeline.precompute.cluster import Cluster, check_resources
from pipeline.precompute.probe import ProbeTask
from pipeline.precompute.spec import ModelSpec, PartitionTask

__all__ = ["Need", "precompute_needs", "probe_needs", "check_reach", "worker_sees"]

SHOWN_PER_WORKER = 3  # problems listed per worker; the rest are counted


@dataclass(frozen=True)
class Need:
    """A path a worker must see: a ``shard`` or ``weights`` file (``size`` as the client sees it),
    or a ``store`` root it writes under (``marker``: the file the client left there)."""

    kind: str
    path: str
    size: int | None = None
    marker: str | None = None


def precompute_needs(tasks: Iterable[PartitionTask]) -> list[Need]:
    """What precompute tasks read and write: their shards, model weights and label store."""
    tasks = list(tasks)
    files = [Need("shard", t.shard_path) for t in tasks] + _weights(m for t in tasks for m in (t.teacher, t.student))
    return _unique(files + [Need("store", t.store) for t in tasks])


def probe_needs(task: ProbeTask) -> list[Need]:
    """What a spot-check reads: its sampled shards and model weights."""
    return _unique([Need("shard", r.shard_path) for r in task.rows] + _weights([task.teacher, task.student]))


def _weights(models: Iterable[ModelSpec | None]) -> list[Need]:
    return [Need("weights", m.weights) for m in models if m is not None]


def _unique(needs: list[Need]) -> list[Need]:
    return list(dict.fromkeys(needs))


def check_reach(cluster: Cluster, needs: Sequence[Need]) -> list[str]:
    """Check resources and placement, then that every worker that can take a task sees ``needs``.

    Returns the addresses of those workers (as :func:`check_resources`). Files the client itself
    cannot see are left to the tasks, which name them as today (exit 3).

    Raises:
        ComputeError: a worker cannot see a file or the store; names each worker and path.
        StoreError: the client cannot write its marker into the store.
    """
    fit = check_resources(cluster, cluster.task_resources)
    files = [Need(n.kind, n.path, size) for n in needs if n.kind != "store" and (size := _size(n.path)) is not None]
    stores = [n.path for n in needs if n.kind == "store"]
    markers = [_leave_marker(root) for root in stores]
    try:
        asked = files + [Need("store", root, marker=m) for root, m in zip(stores, markers)]
        answers = cluster.client.run(worker_sees, asked, workers=fit, on_error="return")
    finally:
        for root, marker in zip(stores, markers):
            _remove(root, marker)
    names = {addr: w.get("name") for addr, w in cluster.workers().items()}
    problems = {addr: _as_problems(answer) for addr, answer in answers.items()}
    blind = {addr: p for addr, p in problems.items() if p}
    if blind:
        raise ComputeError(_message(blind, names, len(answers)))
    return fit


def worker_sees(needs: Sequence[Need]) -> list[str]:
    """Run on a worker: one line per need it cannot see (``"<kind> <path>: <why>"``), else ``[]``."""
    problems = []
    for need in needs:
        why = _store_problem(need) if need.kind == "store" else _file_problem(need)
        if why:
            problems.append(f"{need.kind} {need.path}: {why}")
    return problems


def _file_problem(need: Need) -> str | None:
    try:
        fs, path = paths.resolve(need.path)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return "not found"
        if info.type != pafs.FileType.File:
            return "not a file"
        if info.size != need.size:
            return f"{info.size} bytes here but {need.size} on the client (another file at the same path)"
        with fs.open_input_stream(path) as f:
            f.read(1)
    except (OSError, StoreError) as e:
        return f"not readable ({e})"
    return None


def _store_problem(need: Need) -> str | None:
    assert need.marker is not None  # set by check_reach
    try:
        fs, marker = paths.resolve(paths.join(need.path, need.marker))
        if fs.get_file_info(marker).type != pafs.FileType.File:
            return "not the client's store: the marker the client just wrote there is missing"
        with fs.open_input_stream(marker) as f:
            if f.read().decode() != need.marker:
                return "not the client's store: the marker the client just wrote there differs"
    except (OSError, StoreError) as e:
        return f"not readable ({e})"
    own = paths.join(need.path, f"{need.marker}-{os.getpid()}")
    try:
        fs, path = paths.resolve(own)
        with fs.open_output_stream(path) as f:
            f.write(b"")
        fs.delete_file(path)
    except OSError as e:
        return f"not writable ({e})"
    return None


def _size(path: str) -> int | None:
    try:
        fs, p = paths.resolve(path)
        info = fs.get_file_info(p)
    except (OSError, StoreError):
        return None
    return info.size if info.type == pafs.FileType.File else None


def _leave_marker(root: str) -> str:
    """Write a uniquely named marker into the store root (created when missing); return its name.
    Named like a temp file, so one left by a killed client is swept as one."""
    marker = f"{TMP_PREFIX}reach-{uuid.uuid4().hex[:12]}"
    try:
        fs, fs_root = paths.resolve(root)
        fs.create_dir(fs_root, recursive=True)
        with fs.open_output_stream(paths.resolve(paths.join(root, marker))[1]) as f:
            f.write(marker.encode())
    except OSError as e:
        _remove(root, marker)  # a partly written marker (a full disk): nothing of the check stays behind
        raise StoreError(f"{root}: the label store cannot be written from the client ({e})") from e
    return marker


def _remove(root: str, marker: str) -> None:
    try:
        fs, path = paths.resolve(paths.join(root, marker))
        fs.delete_file(path)
    except (OSError, StoreError):
        pass  # a leftover is a temp file: gc sweeps it


def _as_problems(answer: Any) -> list[str]:
    if isinstance(answer, BaseException):
        return [f"the check itself failed ({answer!r})"]
    return list(answer)


def _message(blind: dict[str, list[str]], names: dict[str, Any], checked: int) -> str:
    lines = [f"{len(blind)} of {checked} worker(s) cannot see what their tasks would read or write "
             "(every worker must see the client's shards, weights and label store at the same paths; "
             "README: What a cluster must share):"]
    for addr, problems in sorted(blind.items()):
        name = names.get(addr)
        who = f"worker {addr}" + (f" ({name})" if name is not None and str(name) != addr else "")
        more = len(problems) - SHOWN_PER_WORKER
        shown = "; ".join(problems[:SHOWN_PER_WORKER]) + (f"; and {more} more" if more > 0 else "")
        lines.append(f"  {who}: {shown}")
    return "\n".join(lines)
