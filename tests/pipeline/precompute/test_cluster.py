"""pipeline.precompute.cluster on a real embedded LocalCluster: 2 worker processes x 1 thread, CPU only."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ComputeError, DataError
from pipeline.precompute.cluster import (
    Cluster,
    check_resources,
    open_cluster,
    run_tasks,
)
from pipeline.precompute.worker import (
    cache_info,
    get_cached,
    worker_device,
    worker_threads,
)

# ---- task functions (module level: the workers import this module to unpickle them) ---------

_factory_calls: dict[str, int] = {}


def _load_model(key: str) -> dict:
    _factory_calls[key] = _factory_calls.get(key, 0) + 1
    time.sleep(0.05)
    return {"weights": key}


def cached_task(item: dict) -> dict:
    model = get_cached(item["model"], lambda: _load_model(item["model"]))
    time.sleep(0.15)
    return {
        "id": item["id"],
        "pid": os.getpid(),
        "model": model["weights"],
        "factory_calls": _factory_calls.get(item["model"], 0),
        "hits": cache_info()["hits"],
        "device": worker_device(),
        "threads": worker_threads(),
        "rows": 10,
    }


def die_once_task(item: dict) -> dict:
    marker = Path(item["marker"])
    if item["id"] == item["victim"] and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.1)
    return {"id": item["id"], "pid": os.getpid()}


def always_die_task(item: dict) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def hang_task(item: dict) -> dict:
    marker = Path(item["marker"])
    if item.get("always") or (item["id"] == item["victim"] and not marker.exists()):
        marker.write_text("hung")
        time.sleep(3600)
    return {"id": item["id"]}


def slow_task(item: dict) -> dict:
    time.sleep(0.4)
    return {"id": item["id"], "rows": 1}


def tensor_task(item: dict) -> dict:
    return {"logits": np.zeros((4, 10))}


def data_error_task(item: dict) -> dict:
    raise DataError(f"shard {item['shard']} is corrupt")


# ---- fixture --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    with open_cluster(
        workers=2,
        threads_per_worker=1,
        device="cpu",
        dashboard=False,
        allowed_failures=1,
        memory_limit=None,
        announce=None,
    ) as c:
        yield c


def _wait_workers(c: Cluster, n: int = 2, timeout: float = 20) -> None:
    c.client.wait_for_workers(n, timeout=timeout)


# ---- tests ----------------------------------------------------------------------------------


def test_describe_and_resources(cluster):
    assert cluster.embedded and not cluster.gpu
    assert cluster.task_resources == {"CPU": 1}
    workers = cluster.workers()
    assert len(workers) == 2
    assert all(w["resources"] == {"CPU": 1} and w["nthreads"] == 1 for w in workers.values())
    assert "2 worker(s)" in cluster.describe()
    assert len(check_resources(cluster, {"CPU": 1})) == 2


def test_parallel_in_order_and_model_loaded_once_per_worker(cluster):
    items = [{"id": i, "model": "fp-test-parallel"} for i in range(10)]
    seen = []
    results = run_tasks(
        cluster, cached_task, items, resources=cluster.task_resources,
        key_prefix="parallel", progress=False, on_result=seen.append,
    )
    assert [r["id"] for r in results] == list(range(10))
    assert sorted(r["id"] for r in seen) == list(range(10))
    pids = {r["pid"] for r in results}
    assert len(pids) == 2, "both workers should have run tasks"
    for pid in pids:
        mine = [r for r in results if r["pid"] == pid]
        assert max(r["factory_calls"] for r in mine) == 1  # loaded once in this process
    assert all(r["model"] == "fp-test-parallel" for r in results)
    assert all(r["device"] == "cpu" and r["threads"] == 1 for r in results)
    # running the same items again: still one load per process, only cache hits
    again = run_tasks(cluster, cached_task, items, resources={"CPU": 1},
                      key_prefix="parallel", progress=False)
    assert all(r["factory_calls"] == 1 for r in again if r["pid"] in pids)


def test_worker_killed_mid_task_job_still_completes(cluster, tmp_path):
    _wait_workers(cluster)
    marker = tmp_path / "died"
    items = [{"id": i, "victim": 3, "marker": str(marker)} for i in range(8)]
    seen = []
    results = run_tasks(cluster, die_once_task, items, resources={"CPU": 1},
                        key_prefix="die-once", progress=False, on_result=seen.append)
    assert marker.exists(), "the victim task should have killed its worker once"
    assert [r["id"] for r in results] == list(range(8))
    assert sorted(r["id"] for r in seen) == list(range(8))  # each exactly once
    assert results[3]["pid"] != int(marker.read_text())


def test_task_that_always_kills_its_worker_is_named(cluster):
    _wait_workers(cluster)
    items = [{"id": "bad", "shard": "shard-000007"}]
    t0 = time.monotonic()
    with pytest.raises(ComputeError) as err:
        run_tasks(cluster, always_die_task, items, resources={"CPU": 1},
                  key_prefix="always-die", progress=False)
    msg = str(err.value)
    assert "shard-000007" in msg and "died 2 times" in msg, msg
    assert err.value.exit_code == 5
    # named after two deaths, not left hanging (no task timeout here): the bound only has to tell
    # those apart; a loaded 2-core machine took 35 s
    assert time.monotonic() - t0 < 120


def test_gpu_request_on_cpu_cluster_fails_fast(cluster):
    t0 = time.monotonic()
    with pytest.raises(ComputeError) as err:
        run_tasks(cluster, slow_task, [{"id": 0}], resources={"GPU": 1},
                  key_prefix="gpu", progress=False)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "GPU" in msg and "CPU" in msg, msg  # says what was asked and what is offered


def test_hanging_task_is_restarted_after_timeout(cluster, tmp_path):
    _wait_workers(cluster)
    marker = tmp_path / "hung"
    items = [{"id": i, "victim": 1, "marker": str(marker)} for i in range(4)]
    results = run_tasks(cluster, hang_task, items, resources={"CPU": 1}, timeout_s=1.5,
                        key_prefix="hang-once", progress=False)
    assert marker.exists()
    assert [r["id"] for r in results] == list(range(4))


def test_always_hanging_task_reports_timeout(cluster, tmp_path):
    _wait_workers(cluster)
    items = [{"id": "h", "shard": "shard-000042", "always": True, "marker": str(tmp_path / "m")}]
    t0 = time.monotonic()
    with pytest.raises(ComputeError) as err:
        run_tasks(cluster, hang_task, items, resources={"CPU": 1}, timeout_s=1.0,
                  key_prefix="hang-always", progress=False)
    msg = str(err.value)
    assert "shard-000042" in msg and "timed out after 1s" in msg, msg
    assert time.monotonic() - t0 < 30


def test_interrupt_cancels_outstanding_tasks_and_rerun_completes(cluster):
    _wait_workers(cluster)
    items = [{"id": i} for i in range(8)]
    seen = []

    def interrupt_after_first(result):
        seen.append(result)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_tasks(cluster, slow_task, items, resources={"CPU": 1}, key_prefix="ctrl-c",
                  progress=False, on_result=interrupt_after_first)
    assert len(seen) == 1
    deadline = time.monotonic() + 10
    while cluster.client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
        assert time.monotonic() < deadline, "cancelled tasks still on the scheduler"
        time.sleep(0.1)
    results = run_tasks(cluster, slow_task, items, resources={"CPU": 1}, key_prefix="ctrl-c",
                        progress=True)
    assert [r["id"] for r in results] == list(range(8))


def test_task_errors(cluster):
    with pytest.raises(ComputeError, match=r"id=0 failed after 1 attempt.*small dicts"):
        run_tasks(cluster, tensor_task, [{"id": 0}], resources={"CPU": 1}, retries=0,
                  key_prefix="tensor", progress=False)
    with pytest.raises(DataError, match="shard-3 is corrupt"):
        run_tasks(cluster, data_error_task, [{"id": 1, "shard": "shard-3"}], resources=None,
                  retries=1, key_prefix="data-error", progress=False)
    with pytest.raises(ValueError, match="unique"):
        run_tasks(cluster, slow_task, [{"id": 1}, {"id": 1}], resources=None,
                  key_prefix="dup", progress=False)


def test_get_cached_in_process():
    calls = []
    a = get_cached("in-process-key", lambda: calls.append(1) or object())
    b = get_cached("in-process-key", lambda: calls.append(1) or object())
    assert a is b and calls == [1]


def test_bad_scheduler_address_is_named_quickly():
    address = "tcp://127.0.0.1:9"  # discard port: nothing listens
    t0 = time.monotonic()
    with pytest.raises(ComputeError) as err:
        with open_cluster(address, connect_timeout=2, announce=None):
            pass
    assert address in str(err.value)
    assert err.value.exit_code == 5
    assert time.monotonic() - t0 < 10


def test_connect_to_existing_scheduler(cluster):
    with open_cluster(cluster.address, connect_timeout=5, announce=None) as remote:
        assert not remote.embedded and not remote.gpu
        assert remote.task_resources == {"CPU": 1}
        assert cluster.address in remote.describe()
        results = run_tasks(remote, slow_task, [{"id": "r"}], resources=remote.task_resources,
                            key_prefix="remote", progress=False)
        assert results == [{"id": "r", "rows": 1}]


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two CUDA devices as torch would report them (none are touched); returns (the worker
    module, the devices set, a fake Dask worker class offering GPU=1 named 3)."""
    import torch

    from pipeline.precompute import worker as cw

    pinned = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(cw, "enable_tf32", lambda: None)  # the real one sets process-wide flags
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(cw, "_state", dict(cw._state))
    monkeypatch.setattr(cw, "_cache_size", cw._cache_size)

    class FakeWorker:
        name = 3
        address = "tcp://fake:1"
        state = type("S", (), {"total_resources": {"GPU": 1}})()

    return cw, pinned, FakeWorker


def test_setup_plugin_pins_gpu_by_worker_name(fake_gpus, monkeypatch):
    cw, pinned, FakeWorker = fake_gpus
    import torch

    torch_threads = []
    monkeypatch.setattr(torch, "set_num_threads", torch_threads.append)
    cw.WorkerSetup(2, gpu_index="name").setup(FakeWorker())
    assert pinned == [1] and cw.worker_device() == "cuda:1" and cw.worker_threads() == 2
    # the 2 threads feed the GPU; torch ops in them stay single-threaded
    assert torch_threads == [1] and os.environ["OMP_NUM_THREADS"] == "1"
    # worker_device() made cuda:1 current in the calling (task) thread as well: per-thread in CUDA
    assert pinned[1:] == [torch.device("cuda", 1)]
    cw.WorkerSetup(1, gpu_index="first").setup(FakeWorker())
    assert pinned[2:] == [0] and cw.worker_device() == "cuda:0"
    FakeWorker.state.total_resources = {"CPU": 1}
    cw.WorkerSetup(1).setup(FakeWorker())
    assert cw.worker_device() == "cpu"
    cw.WorkerSetup(2).setup(FakeWorker())  # a CPU worker's torch takes all its threads
    assert torch_threads[-1] == 2 and os.environ["OMP_NUM_THREADS"] == "2" and cw.worker_threads() == 2


def test_setup_plugin_reports_the_parents_gpu_ids(fake_gpus, monkeypatch):
    # plain LocalCluster: workers inherit CUDA_VISIBLE_DEVICES=4,5; worker 1 takes cuda:1 = physical GPU 5
    cw, pinned, FakeWorker = fake_gpus
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    FakeWorker.name = 1
    cw.WorkerSetup(1, gpu_index="name").setup(FakeWorker())
    report = cw.placement_report()
    assert pinned == [1] and report["device"] == "cuda:1" and report["gpu"] == "5" and report["visible"] == "4,5"
    FakeWorker.name = 0
    cw.WorkerSetup(1, gpu_index="name").setup(FakeWorker())
    assert cw.placement_report()["gpu"] == "4"
    FakeWorker.state.total_resources = {"CPU": 1}
    cw.WorkerSetup(1).setup(FakeWorker())
    assert cw.placement_report()["gpu"] is None and cw.worker_device() == "cpu"


def test_dask_cuda_cluster_gets_the_parents_visible_devices(monkeypatch):
    import sys
    import types

    from pipeline.errors import ConfigError
    from pipeline.precompute import cluster as cl

    seen = {}

    class FakeLocalCUDACluster:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            raise RuntimeError("stop here")

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=FakeLocalCUDACluster))
    monkeypatch.setattr(cl, "_cuda_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(ComputeError, match="stop here"), \
            open_cluster(workers=2, device="cuda", dashboard=False, announce=None):
        pass
    assert seen["CUDA_VISIBLE_DEVICES"] == ["4", "5"] and seen["n_workers"] == 2 and seen["resources"] == {"GPU": 1}
    seen.clear()
    with pytest.raises(ComputeError, match="stop here"), \
            open_cluster(workers=1, device="cuda", dashboard=False, announce=None):
        pass
    assert seen["CUDA_VISIBLE_DEVICES"] == ["4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")  # torch would count 1, but say the parent lists fewer
    with pytest.raises(ConfigError, match="lists 1 device"), \
            open_cluster(workers=2, device="cuda", dashboard=False, announce=None):
        pass


def test_placement_check_on_a_cpu_cluster(cluster):
    from dataclasses import replace

    from pipeline.precompute.cluster import check_placement

    _wait_workers(cluster, timeout=60)  # a worker an earlier test timed out may still be restarting
    reports = check_placement(cluster, {"CPU": 1})
    assert len(reports) == 2 and {r["device"] for r in reports.values()} == {"cpu"}
    assert {r["gpu"] for r in reports.values()} == {None}
    # the config asks for cuda but these workers run on the CPU: the run fails, naming them
    cuda = replace(cluster, device="cuda")
    with pytest.raises(ComputeError, match="runs tasks on the CPU but compute.device is cuda") as err:
        check_resources(cuda, cuda.task_resources)
    assert all(addr in str(err.value) for addr in reports)
