"""Precompute when things go wrong: a worker killed mid-task, a resource no worker offers,
a corrupt image, a truncated shard."""

from __future__ import annotations

import os
import signal
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline._fingerprint import sha256_file
from pipeline.errors import ComputeError, DataError
from pipeline.labels import list_partitions
from pipeline.precompute.cluster import Cluster, run_tasks
from pipeline.precompute.task import run_partition
from tests.pipeline.data.helpers import write_raw_tar
from tests.pipeline.precompute.conftest import ROWS, SHARD
from tests.pipeline.precompute.helpers import read, run, warm


def die_in_teacher_once(item: dict) -> dict:
    """run_partition, except that the victim's first attempt SIGKILLs its worker process in the
    middle of the task (at its first teacher forward: shard read, saliency done, nothing written)."""
    marker = Path(item["marker"])
    if item["id"] == item["victim"] and not marker.exists():
        import pipeline.precompute.task as task_module

        def die(*args, **kwargs):
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

        task_module.teacher_forward = die  # this process is about to die: no need to restore it
    return run_partition(item)


@pytest.mark.slow
def test_worker_killed_mid_task_run_completes_without_duplicates(stage, tasks, cluster, tmp_path):
    cfg = stage(epochs=2)
    ts = tasks(cfg)
    marker = tmp_path / "killed"
    items = [{"id": t.id, "shard": t.shard, "view_epoch": t.view_epoch, "task": t, "marker": str(marker),
              "victim": ts[1].id} for t in ts]
    results = run_tasks(cluster, die_in_teacher_once, items, resources=cluster.task_resources, key_prefix="kill",
                        retries=0, progress=False)
    assert marker.exists(), "the victim's worker was not killed"
    assert [r["rows"] for r in results] == [SHARD] * len(ts)
    got = read(ts)
    assert len(got["keys"]) == len(set(got["keys"])) == 2 * ROWS
    assert sorted(list_partitions(cfg.labels.store)) == sorted(t.path for t in ts)
    warm(cluster)  # the nanny restarted the killed worker


class _AsksForGPU(Cluster):
    @property
    def task_resources(self) -> dict[str, float]:
        return {"GPU": 1}


def test_gpu_tasks_on_a_cpu_cluster_fail_fast(stage, tasks, cluster):
    cfg = stage()
    gpu = _AsksForGPU(client=cluster.client, gpu=True, embedded=False, address=cluster.address)
    t0 = time.monotonic()
    with pytest.raises(ComputeError, match=r"GPU.*no worker offers them"):
        run(tasks(cfg), gpu, cfg, "gpu")
    assert time.monotonic() - t0 < 5
    assert not Path(cfg.labels.store).exists()


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def test_corrupt_image_is_skipped_and_reported(stage, tasks, cluster, tmp_path):
    cfg = stage()
    t = tasks(cfg)[0]
    members = _members(Path(t.shard_path))
    bad_key = "train_000005"
    members = [(n, b"\x89PNG\r\n\x1a\n not really" if n == f"{bad_key}.png" else d) for n, d in members]
    path = write_raw_tar(tmp_path / "train-000000.tar", members)
    bad = replace(t, shard_path=str(path), shard_sha256=sha256_file(path))  # as its manifest would record it

    out = run([bad], cluster, cfg, "corrupt")
    (result,) = out["results"]
    assert result["rows"] == result["rows_computed"] == SHARD - 1
    assert [s["key"] for s in result["skipped"]] == [bad_key]
    assert "png" in result["skipped"][0]["reason"]
    assert out["skipped_samples"] == result["skipped"]
    keys = [k for _, k in read([bad])["keys"]]
    assert bad_key not in keys and len(keys) == SHARD - 1


def test_truncated_shard_fails_with_data_error_naming_it(stage, tasks, cluster, tmp_path):
    cfg = stage()
    t = tasks(cfg)[1]
    data = Path(t.shard_path).read_bytes()
    cut = tmp_path / "train-000001.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(DataError, match=str(cut)):
        run([replace(t, shard_path=str(cut))], cluster, cfg, "truncated")
    assert not Path(t.path).exists()
