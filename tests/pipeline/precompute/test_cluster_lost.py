"""A remote cluster that loses every worker, or its scheduler, mid-segment: ``run_tasks`` fails
with exit 5 (ComputeError) once ``lost_after_s`` has passed instead of hanging; with a worker
back, the same tasks complete. Real ``dask scheduler`` / ``dask worker`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import ComputeError
from pipeline.precompute.cluster import open_cluster, run_tasks
from tests.reliability.helpers import kill9

DASK = str(Path(sys.executable).with_name("dask"))


def _start(*args: str, log: Path) -> subprocess.Popen:
    # the workers unpickle this module's task function: the repository root must be importable there
    root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.Popen([DASK, *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


@pytest.fixture
def remote(tmp_path):
    """A scheduler and one worker (no nanny: a killed worker stays dead), as separate processes."""
    sched_file = tmp_path / "sched.json"
    procs = {"scheduler": _start("scheduler", "--scheduler-file", str(sched_file), "--host", "127.0.0.1", "--port", "0",
                                 "--no-dashboard", log=tmp_path / "scheduler.log")}
    deadline = time.monotonic() + 120  # a bound on start-up, not a timing assertion
    while not sched_file.exists():
        assert time.monotonic() < deadline and procs["scheduler"].poll() is None, (tmp_path / "scheduler.log").read_text()
        time.sleep(0.1)
    address = json.loads(sched_file.read_text())["address"]
    procs["worker"] = _start("worker", address, "--no-nanny", "--nthreads", "1", "--resources", "CPU=1",
                             log=tmp_path / "worker.log")
    yield address, procs, tmp_path
    for p in procs.values():
        kill9(p)


def _items(gate: Path, n: int = 2) -> list[dict]:
    return [{"id": f"t{i}", "gate": str(gate)} for i in range(n)]


def _waits_for_gate(item: dict) -> dict:
    import os as _os
    import time as _time

    while not _os.path.exists(item["gate"]):
        _time.sleep(0.05)
    return {"rows": 1}


def _run_in_thread(cluster, items, **kw):
    out: dict = {}

    def target():
        try:
            out["results"] = run_tasks(cluster, _waits_for_gate, items, resources=None, key_prefix="lost", retries=0,
                                       progress=False, **kw)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def _wait_for_workers(cluster, n: int) -> None:
    deadline = time.monotonic() + 120
    while len(cluster.client.scheduler_info().get("workers", {})) != n:
        assert time.monotonic() < deadline, "worker did not join"
        time.sleep(0.1)


def test_all_workers_lost_fails_with_exit_5_then_a_rerun_completes(remote):
    address, procs, tmp = remote
    with open_cluster(address, announce=None) as cluster:
        _wait_for_workers(cluster, 1)
        thread, out = _run_in_thread(cluster, _items(tmp / "gate"), lost_after_s=3)
        time.sleep(1)  # let the first task start on the worker (not asserted on)
        kill9(procs["worker"])
        thread.join(timeout=120)
        assert not thread.is_alive(), "run_tasks hung after every worker was lost"
        err = out.get("error")
        assert isinstance(err, ComputeError) and err.exit_code == 5, out
        assert "has no worker left for 3 s" in str(err) and address in str(err)

        procs["worker"] = _start("worker", address, "--no-nanny", "--nthreads", "1", log=tmp / "worker2.log")
        _wait_for_workers(cluster, 1)
        (tmp / "gate").touch()
        thread, out = _run_in_thread(cluster, _items(tmp / "gate"), lost_after_s=3)
        thread.join(timeout=120)
        assert out.get("results") == [{"rows": 1}, {"rows": 1}], out


def test_scheduler_lost_fails_with_exit_5(remote):
    address, procs, tmp = remote
    with open_cluster(address, announce=None) as cluster:
        _wait_for_workers(cluster, 1)
        thread, out = _run_in_thread(cluster, _items(tmp / "gate"), lost_after_s=3)
        kill9(procs["scheduler"])
        thread.join(timeout=180)
        assert not thread.is_alive(), "run_tasks hung after the scheduler was lost"
        err = out.get("error")
        assert isinstance(err, ComputeError) and err.exit_code == 5, out
        assert f"lost the connection to the Dask scheduler at {address}" in str(err), err
