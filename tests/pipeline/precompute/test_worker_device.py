"""The worker process's device: CUDA's current device is per thread, so each task thread sets it."""

import torch


def test_a_task_thread_makes_its_workers_gpu_current(monkeypatch):
    # CUDA's current device is per thread: the setup plugin's set_device does not reach task threads
    import threading

    from pipeline.precompute import worker

    pinned = []
    monkeypatch.setitem(worker._state, "device", "cuda:1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pinned.append((threading.current_thread().name, d)))
    t = threading.Thread(target=worker.worker_device, name="task-thread")
    t.start()
    t.join()
    assert pinned == [("task-thread", torch.device("cuda", 1))]
