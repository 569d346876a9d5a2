"""A precompute run's submitted futures followed to their outcomes (the second half of
:func:`pipeline.precompute.cluster.run_tasks`): results in item order, the cluster's health while
waiting, and each failure turned into an error that names its item."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

from distributed import Client, KilledWorker, as_completed

from pipeline._console import progress_bar
from pipeline.errors import ComputeError, PipelineError
from pipeline.precompute.worker import TIMEOUT_TOPIC

POLL_S = 0.1


def collect_results(
    client: Client,
    futures: list[Any],
    items: list[dict],
    keys: list[str],
    *,
    retries: int,
    timeout_s: float | None,
    progress: bool,
    on_result: Callable[[dict], Any] | None,
    lost_after_s: float,
) -> list[dict]:
    """Wait for ``futures`` (one per item, keyed ``keys``); return their results in item order.

    Calls ``on_result`` per finished task in completion order and shows progress; raises
    :func:`task_error`'s error for the first failed task, or :class:`ComputeError` when the
    cluster is lost (:class:`ClusterHealth`). On any error or ``KeyboardInterrupt`` the
    outstanding futures are cancelled first.
    """
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[dict | None] = [None] * len(items)
    bar = progress_bar(total=len(items), desc=None, unit="task", enabled=progress)
    start, rows = time.monotonic(), 0
    health = ClusterHealth(client, lost_after_s)
    finished = as_completed(futures, loop=client.loop)
    try:
        while not finished.is_empty():
            # poll, never block for ever: between polls the client checks the cluster is alive
            if not finished.has_ready():
                health.check()
                time.sleep(POLL_S)
                continue
            health.ok()
            # a task's own failure is reported before a neighbour's that only went down with its worker
            for fut in sorted(finished.next_batch(block=False), key=_report_order):
                if fut.status not in _FINAL:
                    finished.add(fut)  # the scheduler took it back (its worker died): wait for its outcome
                    continue
                i = index[fut.key]
                if fut.status != "finished":
                    raise task_error(client, fut, items[i], keys[i], retries, timeout_s)
                result = fut.result()
                results[i] = result
                fut.release()
                if isinstance(result.get("rows"), (int, float)):
                    rows += result["rows"]
                    bar.set_postfix_str(
                        f"{rows / max(time.monotonic() - start, 1e-9):.1f} rows/s", refresh=False
                    )
                bar.update(1)
                if on_result is not None:
                    on_result(result)
    except BaseException:
        pending = [f for f in futures if not f.done()]
        if pending:
            with contextlib.suppress(Exception):
                client.cancel(pending)
        raise
    finally:
        bar.close()
        for f in futures:
            with contextlib.suppress(Exception):
                f.release()
    return results  # type: ignore[return-value]


_FINAL = ("finished", "error", "cancelled")


def _report_order(fut: Any) -> int:
    return {"error": 0, "cancelled": 1}.get(fut.status, 2)


class ClusterHealth:
    """The client's view of its cluster: fails the run when the scheduler connection or every
    worker has been gone for ``lost_after_s`` seconds (Dask itself would wait for ever)."""

    def __init__(self, client: Client, lost_after_s: float) -> None:
        self.client = client
        self.lost_after_s = lost_after_s
        self.since: float | None = None  # when the cluster was first seen without scheduler or workers

    def ok(self) -> None:
        self.since = None

    def check(self) -> None:
        problem = self._problem()
        if problem is None:
            self.since = None
            return
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since >= self.lost_after_s:
            raise ComputeError(f"{problem} for {self.lost_after_s:g} s (compute.lost_timeout_s); the stage is not "
                               f"recorded: restart the cluster and run again (finished partitions are reused)")

    def _problem(self) -> str | None:
        address = getattr(self.client.scheduler, "address", "?")
        if self.client.status != "running":
            return f"lost the connection to the Dask scheduler at {address} (client {self.client.status})"
        try:
            workers = self.client.scheduler_info().get("workers", {})
        except Exception:  # noqa: BLE001 - the scheduler went away between two checks
            return f"lost the connection to the Dask scheduler at {address}"
        if not workers:
            return f"the Dask cluster at {address} has no worker left"
        return None


def task_error(
    client: Client, fut: Any, item: dict, key: str, retries: int, timeout_s: float | None
) -> PipelineError:
    label = _item_label(item, key)
    if fut.status == "cancelled":
        if client.status != "running":  # the client cancels its futures when the scheduler goes away
            address = getattr(client.scheduler, "address", "?")
            return ComputeError(f"lost the connection to the Dask scheduler at {address} (client {client.status}) while "
                                f"the task for {label} was pending; the stage is not recorded: restart the cluster and "
                                f"run again (finished partitions are reused)")
        return ComputeError(f"task for {label} was cancelled by the cluster")
    try:
        exc = fut.exception()
    except Exception as other:  # noqa: BLE001 - e.g. the future was lost with the scheduler
        exc = other
    if isinstance(exc, KilledWorker):
        attempts = exc.allowed_failures + 1
        timeouts = _timeouts_for(client, key)
        if timeouts:
            msg = (
                f"task for {label} timed out after {timeout_s:g}s on {timeouts} attempt(s) "
                f"(the worker died {attempts} times in all; each timeout restarts its worker)"
            )
        else:
            msg = (
                f"task for {label} failed: its worker died {attempts} times while running it "
                f"(out of memory, a segfault or a kill?); see the worker logs"
            )
        err = ComputeError(msg)
    elif isinstance(exc, PipelineError):
        return exc
    else:
        err = ComputeError(
            f"task for {label} failed after {retries + 1} attempt(s): "
            f"{type(exc).__name__}: {exc}"
        )
    err.__cause__ = exc
    return err


def _timeouts_for(client: Client, key: str) -> int:
    try:
        events = client.get_events(TIMEOUT_TOPIC)
    except Exception:  # noqa: BLE001
        return 0
    return sum(1 for _, msg in events if isinstance(msg, dict) and msg.get("key") == key)


def _item_label(item: dict, key: str) -> str:
    parts = [f"{k}={item[k]}" for k in ("shard", "view_epoch", "id") if k in item]
    return ", ".join(parts) if parts else key
