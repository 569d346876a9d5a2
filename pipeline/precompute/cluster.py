"""The Dask cluster precompute runs on (docs/design.md §6): open it, check it, run tasks on it.

Client-side API::

    with open_cluster(scheduler=None, workers="auto") as cluster:       # a Cluster
        results = run_tasks(cluster.client, precompute_task, items,
                            resources=cluster.task_resources, key_prefix="precompute",
                            on_result=write_lock_entry)

* :func:`open_cluster` starts an embedded ``LocalCluster`` (worker *processes*; one per visible
  GPU offering ``{"GPU": 1}``, or on a CPU box ``cores // threads_per_worker`` workers offering
  ``{"CPU": 1}``, i.e. one task slot each) or connects to ``scheduler`` (``tcp://host:8786``).
  It registers :class:`pipeline.precompute.worker.WorkerSetup` (torch threads, GPU pinning, model
  cache size) and tears everything down on exit, Ctrl-C included.
* :func:`check_resources` fails fast (:class:`ComputeError`) when no worker offers what the
  tasks ask for: Dask would otherwise leave such a task pending forever. Given a
  :class:`Cluster` it also checks GPU placement (:func:`check_placement`): two tasks that could
  share one GPU are refused (:class:`ConfigError`), and so is a worker that would run a
  ``compute.device: cuda`` run's tasks on the CPU (:class:`ComputeError` naming it).
* :func:`run_tasks` submits one pure future per item, shows progress, calls ``on_result`` per
  finished task, returns the results in item order, and turns worker deaths, timeouts and task
  errors into :class:`ComputeError` naming the item.

Task contract: ``fn(item: dict) -> dict`` is a module-level (picklable, importable on the
workers) pure, idempotent function; its result is a *small dict of plain values* (counts,
seconds, paths), never tensors or arrays -- bulk data goes to the store, written atomically by
the task. Worker-side helpers (model cache, device) live in :mod:`pipeline.precompute.worker`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, cast

import dask
import torch
from distributed import Client, LocalCluster

from pipeline._cores import available_cores
from pipeline._gpu import check_placement as _check_placement
from pipeline._gpu import local_device_ids
from pipeline.errors import ComputeError, ConfigError
from pipeline.precompute.outcomes import collect_results
from pipeline.precompute.worker import (
    DEFAULT_CACHE_SIZE,
    WorkerSetup,
    cache_info,
    get_cached,
    placement_report,
    run_task,
    worker_device,
)

try:
    import bokeh  # the dashboard needs it; without it Dask only warns
except ImportError:
    bokeh = None

__all__ = [
    "Cluster",
    "open_cluster",
    "check_resources",
    "check_placement",
    "run_tasks",
    "get_cached",
    "worker_device",
    "cache_info",
]

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
DEFAULT_LOST_AFTER_S = 60.0  # compute.lost_timeout_s: an embedded worker's restart takes seconds, not a minute


@dataclass
class Cluster:
    """An open cluster: the client plus what precompute needs to know about it."""

    client: Client
    gpu: bool  #: workers offer ``{"GPU": 1}`` (tasks should ask for it)
    embedded: bool  #: we started it (LocalCluster) rather than connected to ``address``
    address: str
    dashboard: str | None = None
    device: str = "auto"  #: what the tasks must run on (``compute.device``): checked by :func:`check_placement`
    _local: Any = field(default=None, repr=False)

    @property
    def task_resources(self) -> dict[str, float]:
        """What one precompute task should ask for on this cluster.

        ``{"GPU": 1}`` when any worker offers a GPU; ``{"CPU": 1}`` when workers offer CPU
        slots (embedded CPU clusters); ``{}`` (no constraint) on a remote cluster whose workers
        declare no resources.
        """
        offered = {k for w in self.workers().values() for k in w["resources"]}
        if "GPU" in offered:
            return {"GPU": 1}
        if "CPU" in offered:
            return {"CPU": 1}
        return {}

    def workers(self) -> dict[str, dict[str, Any]]:
        """``{address: {"name", "nthreads", "resources"}}`` of the connected workers."""
        return _workers(self.client)

    def describe(self) -> str:
        """One line for logs and ``--dry-run``: where, how many workers, what they offer."""
        kind = "embedded LocalCluster" if self.embedded else f"scheduler {self.address}"
        text = f"{kind}: {_summarize(self.workers())}"
        if self.dashboard:
            text += f"; dashboard {self.dashboard}"
        return text


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def open_cluster(
    scheduler: str | None = None,
    *,
    workers: int | Literal["auto"] = "auto",
    threads_per_worker: int = 1,
    device: Device = "auto",
    dashboard: bool = True,
    connect_timeout: float = 10.0,
    allowed_failures: int | None = None,
    daemon_workers: bool = True,
    cache_size: int = DEFAULT_CACHE_SIZE,
    memory_limit: str | float | None = "auto",
    announce: Callable[[str], None] | None = _stderr,
    security: Any = None,
) -> Iterator[Cluster]:
    """Open the compute cluster for the duration of a ``with`` block.

    ``scheduler``: ``None`` starts an embedded ``LocalCluster`` on this machine (bound to
    127.0.0.1); an address (``tcp://host:8786``, from ``--scheduler`` or ``compute.scheduler``)
    connects to an existing cluster, raising :class:`ComputeError` naming it when no connection
    is made within ``connect_timeout`` seconds. ``workers``/``threads_per_worker``/``device``/
    ``allowed_failures``/``daemon_workers``/``memory_limit`` apply to the embedded cluster only:

    * ``device="auto"`` uses one worker per visible CUDA GPU (``resources={"GPU": 1}``,
      dask-cuda's ``LocalCUDACluster`` when importable) and CPU workers otherwise; ``"cuda"``
      requires GPUs; ``"cpu"`` forces CPU workers (``resources={"CPU": 1}``, ``workers="auto"``
      = cores // threads_per_worker).
    * ``allowed_failures``: worker deaths a task may cause before it fails with
      ``KilledWorker`` (Dask's ``distributed.scheduler.allowed-failures``, default 3).
    * ``daemon_workers=False`` lets tasks start child processes (e.g. a torch DataLoader with
      ``num_workers > 0``); Dask workers are daemonic by default and cannot.

    ``security``: a ``distributed.security.Security`` (``compute.security``): TLS to a remote
    scheduler, and an embedded cluster listening on ``tls://`` with it.

    ``announce`` receives the human-readable lines (``dashboard: http://...`` when the scheduler
    serves Dask's dashboard: an embedded cluster with bokeh installed, or a remote scheduler
    that reports a ``dashboard`` service); ``None`` silences them.
    On exit (normal, exception or Ctrl-C) the client is closed and an embedded cluster's worker
    processes are shut down; on a remote cluster, already-running tasks finish on their own.
    """
    if threads_per_worker < 1:
        raise ConfigError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
    if scheduler:
        with _connect(scheduler, connect_timeout, threads_per_worker, cache_size, announce, security) as c:
            c.device = device
            yield c
        return
    config: dict[str, Any] = {
        "distributed.worker.daemon": bool(daemon_workers),
        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's
        # dynamic mmap threshold: every large torch temporary is then mmapped, faulted in and
        # unmapped again (measured: ~5x the page faults and ~25% slower teacher forwards on CPU
        # than in a plain process). Workers keep glibc's defaults, like any Python process.
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    }
    if allowed_failures is not None:
        config["distributed.scheduler.allowed-failures"] = int(allowed_failures)
    # Kept for the cluster's whole life: nannies read the daemon flag on every worker restart.
    with dask.config.set(config):
        with _embedded(
            workers, threads_per_worker, device, dashboard, cache_size, memory_limit, announce, security
        ) as c:
            yield c


@contextlib.contextmanager
def _connect(
    address: str,
    timeout: float,
    threads: int,
    cache_size: int,
    announce: Callable[[str], None] | None,
    security: Any = None,
) -> Iterator[Cluster]:
    try:
        client = Client(address, timeout=timeout, set_as_default=False, security=security)
    except Exception as exc:  # OSError, TimeoutError, ValueError (bad address), ...
        raise ComputeError(
            f"cannot connect to the Dask scheduler at {address} within {timeout:g}s: {exc}"
        ) from exc
    try:
        client.register_plugin(WorkerSetup(threads, gpu_index="first", cache_size=cache_size))
        dash = _dashboard(client)
        if dash is None:
            log.debug("the scheduler at %s serves no dashboard (bokeh missing there, or --no-dashboard)", address)
        cluster = Cluster(client=client, gpu=False, embedded=False, address=address, dashboard=dash)
        cluster.gpu = "GPU" in cluster.task_resources
        if dash and announce:
            announce(f"dashboard: {dash}")
        yield cluster
    finally:
        _quietly(client.close)


@dataclass
class _LocalPlan:
    """What an embedded cluster starts: its class, how many workers, what each offers."""

    cls: Any
    n: int
    gpus: int
    resources: dict[str, int]
    gpu_index: str  #: how a worker finds its GPU (WorkerSetup's gpu_index)
    kwargs: dict[str, Any]


def _plan_local(workers: int | str, threads: int, device: str) -> _LocalPlan:
    """The embedded cluster for ``device``: one worker per GPU (dask-cuda's when importable), else CPU workers."""
    if device not in ("auto", "cpu", "cuda", "gpu"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    gpus = 0 if device == "cpu" else _cuda_count()
    if device in ("cuda", "gpu") and gpus == 0:
        raise ComputeError("device 'cuda' was requested but no CUDA GPU is visible")
    cores = available_cores()
    if workers != "auto" and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive integer or 'auto', got {workers!r}")

    cls: Any = LocalCluster
    kwargs: dict[str, Any] = {}
    if gpus:
        n = gpus if workers == "auto" else int(workers)
        if n > gpus:
            raise ConfigError(f"workers={n} but only {gpus} CUDA GPU(s) are visible")
        resources = {"GPU": 1}
        gpu_index = "name"
        try:
            # optional, GPU only: importing dask_cuda loads dask.dataframe and patches it, so not at module top
            from dask_cuda import LocalCUDACluster

            cls, gpu_index = LocalCUDACluster, "first"
            # worker i gets the i-th GPU the parent may use (dask-cuda rotates this list per worker)
            kwargs["CUDA_VISIBLE_DEVICES"] = local_device_ids(n)
        except ImportError:
            pass
    else:
        n = max(1, cores // threads) if workers == "auto" else int(workers)
        if n * threads > cores:
            log.warning(
                "%d workers x %d threads oversubscribe the %d visible cores", n, threads, cores
            )
        resources, gpu_index = {"CPU": 1}, "first"
    return _LocalPlan(cls=cls, n=n, gpus=gpus, resources=resources, gpu_index=gpu_index, kwargs=kwargs)


@contextlib.contextmanager
def _embedded(
    workers: int | str,
    threads: int,
    device: str,
    dashboard: bool,
    cache_size: int,
    memory_limit: Any,
    announce: Callable[[str], None] | None,
    security: Any = None,
) -> Iterator[Cluster]:
    plan = _plan_local(workers, threads, device)
    n, gpus, kwargs = plan.n, plan.gpus, dict(plan.kwargs)
    if security is not None:  # scheduler, workers and client all speak TLS with these certificates
        kwargs.update(security=security, protocol="tls://")
    if dashboard and bokeh is None:
        log.info("no Dask dashboard: bokeh is not installed")
        dashboard = False
    try:
        local = plan.cls(
            n_workers=n,
            threads_per_worker=threads,
            processes=True,
            host="127.0.0.1",
            # The scheduler's HTTP server always runs (default port 8787, which may be taken);
            # a random loopback port avoids clashes, and the dashboard itself is optional.
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": dashboard},
            resources=plan.resources,
            memory_limit=memory_limit,
            silence_logs=logging.ERROR,
            **kwargs,
        )
    except Exception as exc:
        raise ComputeError(f"could not start a local Dask cluster ({n} workers): {exc}") from exc
    client = None
    try:
        client = Client(local, set_as_default=False, security=security)
        client.register_plugin(
            WorkerSetup(threads, gpu_index=plan.gpu_index, cache_size=cache_size, ignore_sigint=True)
        )
        dash = _dashboard(client) if dashboard else None
        cluster = Cluster(
            client=client,
            gpu=bool(gpus),
            embedded=True,
            address=local.scheduler_address,
            dashboard=dash,
            device="cuda" if gpus else "cpu",
            _local=local,
        )
        if dash and announce:
            announce(f"dashboard: {dash}")
        yield cluster
    finally:
        if client is not None:
            _quietly(client.close)
        _quietly(local.close)


def _quietly(close: Callable[[], Any]) -> None:
    """Close something on the way out without masking the exception that got us here."""
    try:
        close()
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001
        log.debug("ignored error while closing: %r", exc)


def _dashboard(client: Client) -> str | None:
    try:
        services = client.scheduler_info(n_workers=0).get("services", {})
    except Exception:  # noqa: BLE001
        return None
    return client.dashboard_link if "dashboard" in services else None


def _workers(client: Client) -> dict[str, dict[str, Any]]:
    info = client.scheduler_info(n_workers=-1)["workers"]
    return {
        addr: {
            "name": w.get("name"),
            "nthreads": w.get("nthreads"),
            "resources": dict(w.get("resources") or {}),
        }
        for addr, w in info.items()
    }


def _summarize(workers: dict[str, dict[str, Any]]) -> str:
    if not workers:
        return "no workers"
    groups: dict[str, int] = {}
    for w in workers.values():
        label = f"resources {w['resources'] or '{}'}, {w['nthreads']} thread(s)"
        groups[label] = groups.get(label, 0) + 1
    return "; ".join(f"{n} worker(s) with {label}" for label, n in sorted(groups.items()))


def check_resources(
    client: Client | Cluster, resources: dict[str, float] | None, *, wait_s: float = 10.0
) -> list[str]:
    """Fail fast unless some connected worker offers ``resources``; return those workers.

    Waits up to ``wait_s`` for at least one worker to connect (a remote cluster may still be
    scaling up), then checks the workers connected *now*: a task asking for a resource no worker
    has would otherwise stay pending forever. The :class:`ComputeError` lists what the workers
    do offer. Call it (``run_tasks`` does) right before submitting.
    """
    cluster, client = client, cast(Client, getattr(client, "client", client))
    resources = dict(resources or {})
    deadline = time.monotonic() + wait_s
    while True:
        workers = _workers(client)
        if workers or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if not workers:
        raise ComputeError(
            f"no Dask worker is connected to the scheduler at {getattr(client.scheduler, 'address', None)} "
            f"(waited {wait_s:g}s)"
        )
    fit = [
        addr
        for addr, w in workers.items()
        if all(w["resources"].get(k, 0) >= v for k, v in resources.items())
    ]
    if not fit:
        raise ComputeError(
            f"tasks need resources {resources} but no worker offers them; the workers offer: "
            f"{_summarize(workers)}. (Start GPU workers with --resources GPU=1, or run on CPU.)"
        )
    if isinstance(cluster, Cluster):
        check_placement(cluster, resources)
    return fit


def check_placement(cluster: Cluster, resources: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Ask every worker where it runs tasks; refuse unsound GPU placement; return the reports.

    Raises :class:`ConfigError` when two tasks could share one GPU (a worker offering ``GPU=8``
    with several threads; workers on the same physical GPU) and :class:`ComputeError` naming
    each worker that would run tasks asking for ``resources`` on the CPU although
    ``cluster.device`` is ``cuda`` (see :func:`pipeline._gpu.placement_problems`).
    """
    try:
        reports = cluster.client.run(placement_report, probe_cuda=cluster.device == "cuda")
    except Exception as exc:  # noqa: BLE001 - a worker left between two calls: the check cannot be made now
        log.warning("GPU placement not checked: %r", exc)
        return {}
    _check_placement(reports, cluster.device, resources)
    return reports


def _item_key(key_prefix: str, item: dict) -> str:
    if "id" in item:
        return f"{key_prefix}-{item['id']}"
    return f"{key_prefix}-{dask.base.tokenize(item)}"


def run_tasks(
    client: Client | Cluster,
    fn: Callable[[dict], dict],
    items: list[dict],
    *,
    resources: dict[str, float] | None,
    key_prefix: str,
    retries: int = 2,
    timeout_s: float | None = None,
    progress: bool = True,
    on_result: Callable[[dict], Any] | None = None,
    check: bool = True,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
) -> list[dict]:
    """Run ``fn(item)`` for every item on the cluster; return the results in item order.

    * One future per item, key ``f"{key_prefix}-{item['id']}"`` (or a hash of the item when it
      has no ``"id"``): deterministic, so submitting the same items twice in one session shares
      the work. Keys must be unique (``ValueError`` otherwise).
    * ``resources`` (e.g. ``cluster.task_resources``) is checked first with
      :func:`check_resources` (``check=False`` skips it).
    * ``retries``: re-runs of a task that *raised*; worker deaths are counted separately by the
      scheduler (``allowed_failures`` in :func:`open_cluster`).
    * ``timeout_s``: a task running longer exits its worker process (the nanny restarts it) and
      is rescheduled like a crash; see :func:`pipeline.precompute.worker.run_task`.
    * ``lost_after_s``: the client's own deadline: when the cluster has had no worker, or the
      client no scheduler, for this long, it fails with :class:`ComputeError` (exit 5) instead of
      waiting for ever (a remote cluster whose workers all died, a scheduler that went away).
    * ``on_result(result)`` is called in the client, once per finished task, in completion
      order (the lock writer hooks here). A progress bar on stderr (when it is a terminal and
      not ``-q``; see :mod:`pipeline._console`) shows tasks and, when results carry ``"rows"``,
      rows/s.

    Raises :class:`ComputeError` naming the item (its ``shard``/``view_epoch``/``id``) when a
    task keeps killing its worker (``KilledWorker``), keeps timing out, or fails after its
    retries (a :class:`PipelineError` raised by the task is re-raised as is). On any error or
    ``KeyboardInterrupt`` the outstanding futures are cancelled first; results already passed
    to ``on_result`` stay done. A task already running on a remote worker cannot be stopped and
    finishes on its own (tasks write atomically, so it leaves a whole partition or nothing).
    """
    client = cast(Client, getattr(client, "client", client))
    keys = [_item_key(key_prefix, item) for item in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:3]
        raise ValueError(f"items must have unique ids; duplicate task keys: {dup}")
    if not items:
        return []
    if check:
        check_resources(client, resources)

    futures = [
        client.submit(
            run_task,
            fn,
            item,
            key,
            timeout_s,
            key=key,
            resources=dict(resources) if resources else None,
            retries=retries,
            pure=True,
        )
        for item, key in zip(items, keys)
    ]
    return collect_results(client, futures, items, keys, retries=retries, timeout_s=timeout_s,
                           progress=progress, on_result=on_result, lost_after_s=lost_after_s)
