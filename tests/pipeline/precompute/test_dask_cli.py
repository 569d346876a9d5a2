"""Precompute on a cluster started with Dask's own CLI (issue 15, item 6): `dask scheduler
--scheduler-file F` and two `dask worker` processes (1 thread, ``--resources CPU=1``, the slot a
CPU precompute task asks for), reached by `mkd-pipeline precompute` through ``--scheduler-file``
and through ``$DASK_SCHEDULER_ADDRESS``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from distributed import Client

from pipeline._lock import LOCK_NAME, load_lock
from pipeline.precompute import cluster as cluster_mod
from pipeline.precompute.cluster import open_cluster
from pipeline.precompute.worker import cache_info
from tests.pipeline.precompute.conftest import ROWS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
CLI = str(Path(sys.executable).parent / "mkd-pipeline")


def _env(**extra: str) -> dict[str, str]:
    """The children's environment: this checkout's code first, one thread per process, and no
    scheduler from outside unless ``extra`` names one."""
    env = {k: v for k, v in os.environ.items() if k not in ("MKD_SCHEDULER", "DASK_SCHEDULER_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):  # workers before the scheduler
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def dask_cli_cluster(tmp_path_factory):
    """``SimpleNamespace(file, address)`` of a scheduler + 2 workers run by the Dask CLI."""
    d = tmp_path_factory.mktemp("dask-cli")
    sched_file = d / "scheduler.json"
    procs: list[subprocess.Popen] = []
    with contextlib.ExitStack() as files:
        logs = [files.enter_context(open(d / f"{name}.log", "wb")) for name in ("scheduler", "w0", "w1")]
        try:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(sched_file),
                 "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
                env=_env(), stdout=logs[0], stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 60
            while not sched_file.exists():
                assert procs[0].poll() is None, (d / "scheduler.log").read_text()
                assert time.monotonic() < deadline, "the scheduler wrote no scheduler file"
                time.sleep(0.2)
            for i in range(2):
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(sched_file),
                     "--nthreads", "1", "--resources", "CPU=1", "--name", f"w{i}", "--memory-limit", "0",
                     "--no-dashboard"],
                    env=_env(), stdout=logs[i + 1], stderr=subprocess.STDOUT))
            with Client(scheduler_file=str(sched_file), timeout=30) as client:
                client.wait_for_workers(2, timeout=120)
                address = client.scheduler.address
            yield SimpleNamespace(file=sched_file, address=address)
        finally:
            _stop(procs)


def _precompute(stage_yaml: Path, *args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([CLI, "precompute", str(stage_yaml), "--segment", "0", *args], capture_output=True,
                          text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _scheduler_saw(address: str, prefix: str) -> tuple[list[str], int]:
    """Keys starting with ``prefix`` the scheduler finished, and model-cache loads on its workers."""
    with Client(address, timeout=30) as client:
        keys = client.run_on_scheduler(
            lambda dask_scheduler: sorted({str(t.key) for t in dask_scheduler.transition_log if t.finish == "memory"})
        )
        loads = sum(info["misses"] for info in client.run(cache_info).values())
    return [k for k in keys if k.startswith(prefix)], loads


def _labels_written(cfg_name: str, run_root: Path) -> int:
    """Rows in the segment's partition files (each must exist), as the run lock lists them."""
    lock = load_lock(run_root / "runs" / cfg_name / LOCK_NAME)
    parts = lock["stages"]["precompute-0"]["partitions"]
    assert len(parts) == 2
    for p in parts:
        assert Path(p["path"]).is_file()
        assert pq.read_metadata(p["path"]).num_rows == p["rows"]
    return sum(p["rows"] for p in parts)


def test_precompute_via_scheduler_file_and_dask_env(dask_cli_cluster, stage, tmp_path):
    c = dask_cli_cluster
    stage("viafile")
    out = _precompute(tmp_path / "viafile.yaml", "--scheduler-file", str(c.file), env=_env())
    assert f"segment 0: 2 partitions, {ROWS} rows; teacher forwards done {ROWS}" in out
    assert _labels_written("viafile", tmp_path) == ROWS
    keys, loads = _scheduler_saw(c.address, "viafile-precompute-0-")
    assert len(keys) == 2 and loads >= 2  # each task loaded teacher + student on an external worker

    stage("viaenv", store=tmp_path / "store-env")  # a store of its own: computed again, on the same cluster
    out = _precompute(tmp_path / "viaenv.yaml", env=_env(DASK_SCHEDULER_ADDRESS=c.address))
    assert f"segment 0: 2 partitions, {ROWS} rows; teacher forwards done {ROWS}" in out
    assert _labels_written("viaenv", tmp_path) == ROWS
    keys, _ = _scheduler_saw(c.address, "viaenv-precompute-0-")
    assert len(keys) == 2


def test_remote_dashboard_is_announced_when_the_scheduler_serves_one(dask_cli_cluster, monkeypatch):
    # bokeh is optional (and this scheduler runs --no-dashboard): stand in for a scheduler reporting one
    monkeypatch.setattr(cluster_mod, "_dashboard", lambda client: "http://127.0.0.1:8787/status")
    lines: list[str] = []
    with open_cluster(dask_cli_cluster.address, announce=lines.append) as remote:
        assert not remote.embedded and remote.task_resources == {"CPU": 1}
    assert lines == ["dashboard: http://127.0.0.1:8787/status"]
