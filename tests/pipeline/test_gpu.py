"""pipeline._gpu: device placement, the placement check and the default precision, with CUDA absent."""

from __future__ import annotations

import pytest
import torch

from pipeline import _gpu
from pipeline.errors import ComputeError, ConfigError


def test_visible_ids_follow_cuda_visible_devices():
    assert _gpu.visible_ids({}) is None
    assert _gpu.visible_ids({"CUDA_VISIBLE_DEVICES": "4,5"}) == ["4", "5"]
    assert _gpu.visible_ids({"CUDA_VISIBLE_DEVICES": " GPU-aa , GPU-bb "}) == ["GPU-aa", "GPU-bb"]
    assert _gpu.visible_ids({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_local_workers_take_the_parents_devices_in_order():
    assert _gpu.local_device_ids(2, {"CUDA_VISIBLE_DEVICES": "4,5"}) == ["4", "5"]
    assert _gpu.local_device_ids(1, {"CUDA_VISIBLE_DEVICES": "7,3"}) == ["7"]
    assert _gpu.local_device_ids(3, {}) == ["0", "1", "2"]
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=4,5 lists 2"):
        _gpu.local_device_ids(3, {"CUDA_VISIBLE_DEVICES": "4,5"})


def test_physical_id_of_a_process_device():
    env = {"CUDA_VISIBLE_DEVICES": "4,5"}
    assert [_gpu.physical_id(i, env) for i in (0, 1)] == ["4", "5"]
    assert _gpu.physical_id(1, {}) == "1"
    with pytest.raises(ConfigError, match="cuda:2 is not visible"):
        _gpu.physical_id(2, env)


def test_local_rank_device_refuses_ranks_without_a_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert _gpu.local_rank_device(1, 2) == 1
    with pytest.raises(ConfigError, match=r"local rank 2 has no GPU of its own: 2 CUDA device\(s\) visible "
                                          r"\(CUDA_VISIBLE_DEVICES=4,5\); use compute.nproc <= 2"):
        _gpu.local_rank_device(2, 2)


def test_default_precision_is_bf16_on_cuda_and_fp32_on_cpu(monkeypatch):
    assert _gpu.resolve_precision("auto", "cuda") == "bf16"
    assert _gpu.resolve_precision("auto", "cpu") == "fp32"
    assert _gpu.resolve_precision("fp32", "cuda") == "fp32"
    assert _gpu.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _gpu.resolve_precision("auto", "auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _gpu.resolve_precision("auto", "auto") == "fp32"


def test_enable_tf32_switches_tf32_on_for_cuda_only():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    cpu = torch.backends.mkldnn.matmul.fp32_precision if hasattr(torch.backends.mkldnn, "matmul") else None
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        _gpu.enable_tf32()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        if cpu is not None:  # CPU matmuls stay float32 (labels on CPU are unchanged)
            assert torch.backends.mkldnn.matmul.fp32_precision == cpu
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _report(name, device="cuda:0", gpu="0", uuid=None, host="h1", resources=None, nthreads=1, cuda=1):
    return {"name": name, "host": host, "device": device, "gpu": gpu, "gpu_uuid": uuid, "visible": None,
            "resources": {"GPU": 1} if resources is None else resources, "nthreads": nthreads, "cuda_devices": cuda}


def test_dask_cuda_workers_on_distinct_gpus_pass():
    reports = {"tcp://a:1": _report("w0", uuid="GPU-a"), "tcp://a:2": _report("w1", uuid="GPU-b")}
    assert _gpu.placement_problems(reports, "cuda", {"GPU": 1}) == ([], [])
    _gpu.check_placement(reports, "cuda", {"GPU": 1})


def test_plain_workers_all_on_gpu_zero_are_refused():
    # `dask worker --nworkers 8 --resources GPU=1`: every process sees all GPUs and takes cuda:0
    reports = {f"tcp://a:{i}": _report(f"w{i}", uuid="GPU-zero") for i in range(8)}
    config, compute = _gpu.placement_problems(reports, "cuda", {"GPU": 1})
    assert len(config) == 1 and "8 workers share one GPU (GPU-zero)" in config[0] and "dask cuda worker" in config[0]
    assert compute == []
    with pytest.raises(ConfigError, match="GPU placement refused"):
        _gpu.check_placement(reports, "auto", {"GPU": 1})


def test_same_gpu_without_uuid_is_told_apart_by_host():
    same_host = {"tcp://a:1": _report("w0", gpu="0"), "tcp://a:2": _report("w1", gpu="0")}
    assert _gpu.placement_problems(same_host, "cuda", {"GPU": 1})[0]
    two_hosts = {"tcp://a:1": _report("w0", gpu="0"), "tcp://b:1": _report("w1", gpu="0", host="h2")}
    assert _gpu.placement_problems(two_hosts, "cuda", {"GPU": 1}) == ([], [])


def test_worker_offering_eight_gpus_to_eight_threads_is_refused():
    reports = {"tcp://a:1": _report("big", resources={"GPU": 8}, nthreads=8)}
    config, _ = _gpu.placement_problems(reports, "cuda", {"GPU": 1})
    assert len(config) == 1 and "offers GPU=8 with 8 threads: up to 8 tasks would share its one device (cuda:0)" in config[0]
    # one thread runs one task at a time: nothing is shared
    assert _gpu.placement_problems({"tcp://a:1": _report("big", resources={"GPU": 8})}, "cuda", {"GPU": 1}) == ([], [])


def test_cuda_run_on_a_cpu_worker_fails_naming_it():
    # a `dask cuda worker` started without --resources GPU=1: its setup leaves it on the CPU
    reports = {"tcp://a:1": _report("gpu-box-0", device="cpu", gpu=None, resources={}, cuda=2)}
    with pytest.raises(ComputeError, match=r"worker gpu-box-0 \(tcp://a:1\) on h1 runs tasks on the CPU but "
                                           r"compute.device is cuda: it offers no GPU resource: start GPU workers "
                                           r"with --resources GPU=1 \(torch sees 2 CUDA device\(s\) there\)"):
        _gpu.check_placement(reports, "cuda", {})
    # the same worker is fine for device auto / cpu
    _gpu.check_placement(reports, "auto", {})
    no_cuda = {"tcp://a:1": _report("w", device="cpu", gpu=None, cuda=0)}
    with pytest.raises(ComputeError, match="torch sees no CUDA device there"):
        _gpu.check_placement(no_cuda, "cuda", {"GPU": 1})


def test_workers_that_cannot_run_the_tasks_are_not_looked_at():
    # a CPU-only worker beside the GPU workers never gets a task asking for GPU=1
    reports = {"tcp://a:1": _report("gpu", uuid="GPU-a"), "tcp://b:1": _report("cpu", device="cpu", resources={"CPU": 1})}
    assert _gpu.placement_problems(reports, "cuda", {"GPU": 1}) == ([], [])
    assert _gpu.placement_problems(reports, "cuda", {})[1]


def test_tf32_enters_the_label_fingerprint_of_fp32_on_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _gpu.uses_tf32("fp32", "cuda") and _gpu.uses_tf32("fp32", "cuda:1")
    assert not _gpu.uses_tf32("fp32", "cpu") and not _gpu.uses_tf32("bf16", "cuda")
    assert not _gpu.uses_tf32("fp32", "auto"), "auto resolves to the CPU without CUDA"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _gpu.uses_tf32("fp32", "auto")


def test_lag_one_on_an_embedded_gpu_cluster_beside_gpu_ranks_is_refused():
    with pytest.raises(ConfigError, match="schedule.lag: 1 .* share the same GPUs"):
        _gpu.check_overlap(1, embedded=True, precompute_gpu=True, train_gpu=True)
    _gpu.check_overlap(0, embedded=True, precompute_gpu=True, train_gpu=True)
    _gpu.check_overlap(1, embedded=False, precompute_gpu=True, train_gpu=True)  # its workers have their own GPUs
    _gpu.check_overlap(1, embedded=True, precompute_gpu=False, train_gpu=True)
    _gpu.check_overlap(1, embedded=True, precompute_gpu=True, train_gpu=False)
