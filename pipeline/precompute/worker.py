"""Worker-side half of :mod:`pipeline.precompute.cluster`: setup plugin, model cache, task watchdog.

Everything here runs inside Dask worker processes (and also works in a plain process, so a task
function can be called directly in tests or in-process runs). It does not import torch at module
level: a worker imports this module when it unpickles :class:`WorkerSetup`, before ``setup``
sets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, and torch would load its thread pools before that.

Use inside a task::

    from pipeline.precompute.worker import get_cached, worker_device

    def precompute_task(item: dict) -> dict:
        device = worker_device()                      # "cuda:0" on a GPU worker, else "cpu"
        teacher = get_cached(teacher_fingerprint, lambda: load_teacher(...).to(device))
        ...
        return {"rows": n, ...}                       # a small dict, never tensors
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, TypeVar

from distributed import WorkerPlugin, get_worker

from pipeline._gpu import ENV, device_uuid, enable_tf32, physical_id
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

PLUGIN_NAME = "mkd-pipeline-setup"
TIMEOUT_TOPIC = "mkd-pipeline-timeout"
TIMEOUT_EXIT_CODE = 75  # what a worker killed by the task watchdog exits with
DEFAULT_CACHE_SIZE = 4

# ---------------------------------------------------------------------------------------------
# Per-process state (one Dask worker process = one copy of it)

_state: dict[str, Any] = {"device": None, "threads": None, "torch_threads": None, "torch_threads_applied": False,
                          "gpu": None, "gpu_uuid": None}
_cache: OrderedDict[str, Any] = OrderedDict()
_cache_lock = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}
_stats = {"hits": 0, "misses": 0, "evictions": 0}
_cache_size = DEFAULT_CACHE_SIZE


def get_cached(key: str, factory: Callable[[], T]) -> T:
    """Return the object cached under ``key`` in this process, calling ``factory()`` on a miss.

    ``key`` must identify the object completely (use its fingerprint: same key = same weights).
    The factory runs at most once per key per process even when several task threads ask at the
    same time. The cache is a small LRU (:data:`DEFAULT_CACHE_SIZE` entries, set by the setup
    plugin's ``cache_size``); an evicted model is freed when no running task still holds it.
    """
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            _stats["hits"] += 1
            return _cache[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _cache_lock:  # another thread may have loaded it while we waited
            if key in _cache:
                _cache.move_to_end(key)
                _stats["hits"] += 1
                return _cache[key]
        value = factory()
        with _cache_lock:
            _cache[key] = value
            _stats["misses"] += 1
            while len(_cache) > max(1, _cache_size):
                _cache.popitem(last=False)
                _stats["evictions"] += 1
            _key_locks.pop(key, None)
        return value


def cache_info() -> dict[str, Any]:
    """This process's cache: ``{"pid", "keys", "hits", "misses", "evictions", "size"}``."""
    with _cache_lock:
        return {"pid": os.getpid(), "keys": list(_cache), "size": _cache_size, **_stats}


def worker_device() -> str:
    """The torch device tasks on this worker should use: ``"cuda:N"`` on a GPU worker, else "cpu".

    Set by the setup plugin from the worker's resources (a worker offering ``GPU`` gets its GPU).
    Outside a configured worker it is ``"cpu"``. Also applies the plugin's torch thread count if
    torch was imported after setup, and makes the device current in the calling thread (CUDA's
    current device is per thread; the plugin ran in another one).
    """
    _apply_torch_threads()
    device = _state["device"] or "cpu"
    if device != "cpu":
        from pipeline.placement import use_device  # imports torch: see the module docstring

        use_device(device)
    return device


def worker_threads() -> int | None:
    """The threads the setup plugin gave this worker (None if unset): its feed threads, and torch's
    intra-op threads too on a CPU worker (a GPU worker's torch runs one)."""
    return _state["threads"]


def _apply_torch_threads() -> None:
    threads = _state["torch_threads"]
    if threads and not _state["torch_threads_applied"] and "torch" in sys.modules:
        import torch  # not at module top: see the module docstring

        torch.set_num_threads(threads)
        _state["torch_threads_applied"] = True


# ---------------------------------------------------------------------------------------------
# Setup plugin


class WorkerSetup(WorkerPlugin):
    """Configure a worker process once, at worker start (and again after every restart).

    * torch intra-op threads = ``threads`` on a CPU worker, 1 on a GPU worker (whose ``threads``
      are its feed threads, :func:`pipeline.precompute.feed.feed_threads`) (env
      ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for a later import, ``torch.set_num_threads`` if
      torch is already loaded or a GPU is used);
    * a worker whose resources include ``GPU`` pins its CUDA device: ``gpu_index="name"`` uses
      ``int(worker.name) % device_count`` (plain LocalCluster: all workers inherit the parent's
      ``CUDA_VISIBLE_DEVICES``, names are 0..N-1, so worker i takes the i-th listed GPU);
      ``"first"`` uses device 0 (dask-cuda rotates CUDA_VISIBLE_DEVICES, and ``dask cuda worker``
      processes on remote clusters see their own GPU first). Plain remote workers that all see
      the same GPUs would all take device 0: the client refuses that
      (:func:`pipeline.precompute.cluster.check_placement`). TF32 is switched on for float32
      matmuls (:func:`pipeline._gpu.enable_tf32`);
    * the model cache capacity;
    * ``ignore_sigint``: embedded clusters only, so that Ctrl-C in the terminal reaches the
      client (which cancels and tears the cluster down) instead of killing workers mid-task.
    """

    name = PLUGIN_NAME

    def __init__(
        self,
        threads: int = 1,
        *,
        gpu_index: str = "first",
        cache_size: int = DEFAULT_CACHE_SIZE,
        ignore_sigint: bool = False,
    ) -> None:
        self.threads = int(threads)
        self.gpu_index = gpu_index
        self.cache_size = int(cache_size)
        self.ignore_sigint = ignore_sigint

    def setup(self, worker) -> None:  # noqa: ANN001 - distributed.Worker
        global _cache_size
        _cache_size = self.cache_size
        _state["threads"] = self.threads
        _state["torch_threads_applied"] = False
        if self.ignore_sigint and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        device = "cpu"
        _state["gpu"] = _state["gpu_uuid"] = None
        if _worker_resources(worker).get("GPU", 0) >= 1:
            import torch  # not at module top: see the module docstring

            count = torch.cuda.device_count()
            if count == 0:
                log.warning("worker %s offers GPU but torch sees no CUDA device", worker.address)
            else:
                index = 0
                if self.gpu_index == "name":
                    try:
                        index = int(worker.name) % count
                    except (TypeError, ValueError):
                        index = 0
                # current in this (the plugin's) thread only: worker_device() sets it in each task thread
                torch.cuda.set_device(index)
                enable_tf32()
                device = f"cuda:{index}"
                _state["gpu"], _state["gpu_uuid"] = _physical(index), device_uuid(index)
        _state["device"] = device
        # a GPU worker's CPU work is its feed threads (worker_threads() of them); torch ops they
        # run (torch's resize) would each start an OpenMP team of `threads` more, spinning
        _state["torch_threads"] = self.threads if device == "cpu" else 1
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(_state["torch_threads"])
        _apply_torch_threads()


def placement_report(dask_worker: Any = None, probe_cuda: bool = False) -> dict[str, Any]:
    """Where this worker runs its tasks, for the client's placement check (``client.run``, which
    passes ``dask_worker``; in a task or a plain process the worker is looked up, if any).

    ``{"name", "host", "pid", "device", "gpu", "gpu_uuid", "visible", "resources", "nthreads",
    "cuda_devices"}``: ``gpu`` is the device's id as ``CUDA_VISIBLE_DEVICES`` names it,
    ``gpu_uuid`` its UUID; ``cuda_devices`` (how many CUDA devices torch sees) is asked only on
    GPU workers or with ``probe_cuda`` (it imports torch).
    """
    worker = dask_worker
    if worker is None:
        try:
            worker = get_worker()
        except ValueError:
            worker = None
    resources = _worker_resources(worker) if worker is not None else {}
    cuda_devices = None
    if probe_cuda or resources.get("GPU", 0) >= 1 or "torch" in sys.modules:
        import torch  # not at module top: see the module docstring

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "name": None if worker is None else worker.name,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": _state["device"] or "cpu",
        "gpu": _state["gpu"],
        "gpu_uuid": _state["gpu_uuid"],
        "visible": os.environ.get(ENV),
        "resources": resources,
        "nthreads": getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", None),
        "cuda_devices": cuda_devices,
    }


def _physical(index: int) -> str:
    try:
        return physical_id(index)
    except ConfigError:  # CUDA_VISIBLE_DEVICES lists ids torch did not count: report the index
        return str(index)


def _worker_resources(worker) -> dict[str, float]:  # noqa: ANN001
    state = getattr(worker, "state", None)
    res = getattr(state, "total_resources", None)
    if res is None:
        res = getattr(worker, "total_resources", None) or {}
    return dict(res)


# ---------------------------------------------------------------------------------------------
# Task wrapper (what run_tasks actually submits)


def run_task(fn: Callable[[dict], dict], item: dict, key: str, timeout_s: float | None) -> dict:
    """Run ``fn(item)`` on a worker, enforce the result contract and the optional watchdog.

    Watchdog: if ``fn`` has not returned after ``timeout_s`` seconds, the worker logs a
    ``TIMEOUT_TOPIC`` event for ``key`` and exits the whole worker process (a hung task cannot
    be interrupted from Python: it may be stuck in C, CUDA or a deadlock). The nanny restarts
    the worker and the scheduler reschedules the task like any other worker death; after
    ``distributed.scheduler.allowed-failures`` deaths it fails with ``KilledWorker``, which
    :func:`pipeline.precompute.cluster.run_tasks` reports as a timeout.
    """
    worker_device()  # this task thread's current CUDA device, before anything touches CUDA
    done = threading.Event()
    timer = None
    if timeout_s:
        try:
            worker = get_worker()
        except ValueError:
            worker = None  # not on a worker: nothing to restart, run without a watchdog
        if worker is not None:
            timer = threading.Timer(timeout_s, _on_timeout, args=(worker, key, timeout_s, done))
            timer.daemon = True
            timer.start()
    try:
        result = fn(item)
    finally:
        done.set()
        if timer is not None:
            timer.cancel()
    check_result(result)
    return result


def _on_timeout(worker, key: str, timeout_s: float, done: threading.Event) -> None:  # noqa: ANN001
    if done.is_set():
        return
    log.error("task %s exceeded its %ss timeout; exiting worker %s", key, timeout_s, worker.address)
    try:
        worker.log_event(TIMEOUT_TOPIC, {"key": key, "timeout_s": timeout_s, "worker": worker.address})
        time.sleep(0.5)  # let the batched stream deliver the event before the process dies
    finally:
        if not done.is_set():
            os._exit(TIMEOUT_EXIT_CODE)


def check_result(result: Any) -> None:
    """Results must be small dicts of plain values: no tensors or arrays (``ndim >= 1``)."""
    if not isinstance(result, dict):
        raise TypeError(f"a task must return a dict, got {type(result).__name__}")
    _check_small(result, "result", 0)


def _check_small(value: Any, path: str, depth: int) -> None:
    if depth > 8:
        raise TypeError(f"{path}: task results must be small, shallow dicts")
    if getattr(value, "ndim", 0):
        raise TypeError(
            f"{path} is a {type(value).__name__} with shape {getattr(value, 'shape', '?')}: "
            "task results must be small dicts (write tensors to the store, return counts)"
        )
    if isinstance(value, dict):
        for k, v in value.items():
            _check_small(v, f"{path}[{k!r}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        if len(value) > 10_000:
            raise TypeError(f"{path} has {len(value)} entries: task results must be small")
        for i, v in enumerate(value):
            _check_small(v, f"{path}[{i}]", depth + 1)
