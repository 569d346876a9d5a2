"""Workers check what they can see before any task runs (issue 27, item 2).

The precompute tests' LocalCluster (2 worker processes), where worker "1" does not see some of the
client's paths: a worker plugin, in that worker's process only, points the paths under a folder to
another folder (as a worker whose mount there holds another disk, or none). The stage must stop with exit
5 naming that worker and the path, before any task is submitted, and the other worker must pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from distributed import WorkerPlugin

from pipeline.cli import main
from pipeline.errors import ComputeError
from pipeline.labels import paths
from pipeline.precompute.cluster import open_cluster
from pipeline.precompute.reach import Need, check_reach, precompute_needs, worker_sees
from tests.pipeline.precompute.helpers import run

BLIND = "1"  # the name of the worker that does not see the folder


class Elsewhere(WorkerPlugin):
    """In worker ``BLIND``: paths under ``folder`` resolve under ``instead`` (until torn down)."""

    name = "elsewhere"

    def __init__(self, folder: Path, instead: Path) -> None:
        self.folder, self.instead = str(folder), str(instead)
        self.original = None

    def setup(self, worker) -> None:
        if str(worker.name) != BLIND:
            return
        self.original = original = paths.resolve
        folder, instead = self.folder, self.instead

        def resolve(path: str):
            fs, p = original(path)
            return fs, instead + p[len(folder):] if p.startswith(folder) else p

        paths.resolve = resolve

    def teardown(self, worker) -> None:
        if self.original is not None:
            paths.resolve = self.original


@pytest.fixture
def elsewhere(cluster, tmp_path):
    """elsewhere(folder) -> worker "1" of the precompute tests' cluster sees an empty folder where
    the client sees ``folder`` (for this test only)."""
    client = cluster.client

    def blind(folder: Path) -> Path:
        instead = tmp_path / "elsewhere"
        instead.mkdir()
        client.register_plugin(Elsewhere(folder, instead))
        return instead

    yield blind
    if Elsewhere.name in client.run_on_scheduler(_plugins):
        client.unregister_worker_plugin(Elsewhere.name)


def _plugins(dask_scheduler) -> list[str]:
    return list(dask_scheduler.worker_plugins)


def _submitted(cluster, key_prefix: str) -> bool:
    """Whether the scheduler ever saw a task of ``key_prefix`` (its transition log keeps them)."""
    return cluster.client.run_on_scheduler(_keys_seen, key_prefix)


def _keys_seen(key_prefix: str, dask_scheduler=None) -> bool:
    return any(str(t[0]).startswith(key_prefix) for t in dask_scheduler.transition_log)


def _addresses(cluster) -> dict[str, str]:
    """``{worker name: address}``."""
    return {str(w["name"]): addr for addr, w in cluster.workers().items()}


def test_a_worker_that_does_not_see_the_shards_stops_the_stage_before_any_task(
        cluster, elsewhere, stage, tasks, dataset):
    cfg = stage()
    ts = tasks(cfg)
    elsewhere(dataset)
    with pytest.raises(ComputeError) as e:
        run(ts, cluster, cfg, "reach-shards")
    message = str(e.value)
    by_name = _addresses(cluster)
    assert e.value.exit_code == 5
    assert f"worker {by_name[BLIND]}" in message and by_name["0"] not in message
    assert f"shard {ts[0].shard_path}: not found" in message
    assert "1 of 2 worker(s)" in message
    # nothing submitted, nothing written; the client's marker is gone from the store
    assert not _submitted(cluster, "reach-shards")
    assert paths.list_partitions(cfg.labels.store) == []
    assert paths.list_temp_files(cfg.labels.store) == []


def test_a_worker_that_sees_another_store_is_named(cluster, elsewhere, stage, tasks, tmp_path):
    cfg = stage()
    ts = tasks(cfg)
    Path(cfg.labels.store).mkdir()
    instead = elsewhere(Path(cfg.labels.store))
    with pytest.raises(ComputeError) as e:
        run(ts, cluster, cfg, "reach-store")
    assert f"store {cfg.labels.store}: not the client's store" in str(e.value)
    assert f"worker {_addresses(cluster)[BLIND]}" in str(e.value)
    # the blind worker wrote nothing into its own folder either (it checks before writing)
    assert list(instead.iterdir()) == []
    assert not _submitted(cluster, "reach-store")


def test_precompute_command_exits_5_naming_the_weights_a_worker_cannot_read(
        cluster, elsewhere, stage, ckpts, tmp_path, capsys):
    cfg = stage("reachcli")
    elsewhere(Path(ckpts["teacher"]).parent)
    with pytest.raises(SystemExit) as e:
        main(["-q", "precompute", str(tmp_path / "reachcli.yaml"), "--segment", "0", "--scheduler", cluster.address])
    err = capsys.readouterr().err
    assert e.value.code == 5, err
    assert f"weights {ckpts['teacher']}: not found" in err
    assert f"worker {_addresses(cluster)[BLIND]}" in err
    assert not _submitted(cluster, "reachcli-")  # the runner's key prefix: the stage's name
    assert not Path(cfg.labels.store).exists() or paths.list_partitions(cfg.labels.store) == []


def test_probe_command_exits_5_naming_the_shard_a_worker_cannot_read(
        cluster, elsewhere, stage, dataset, tmp_path, capsys):
    stage("reachprobe")
    elsewhere(dataset)
    with pytest.raises(SystemExit) as e:
        main(["-q", "probe", str(tmp_path / "reachprobe.yaml"), "--samples", "8", "--scheduler", cluster.address])
    err = capsys.readouterr().err
    assert e.value.code == 5, err
    assert f"worker {_addresses(cluster)[BLIND]}" in err and f"shard {dataset}" in err and ": not found" in err
    assert not _submitted(cluster, "reachprobe-")


def test_workers_that_see_everything_pass_and_run(cluster, stage, tasks):
    cfg = stage()
    ts = tasks(cfg)
    out = run(ts, cluster, cfg, "reach-ok")
    assert out["partitions"] == len(ts) and out["cached"] == 0
    assert _submitted(cluster, "reach-ok")  # the log the tests above read does keep submitted tasks
    assert paths.list_temp_files(cfg.labels.store) == []


def test_worker_sees_names_a_resized_file_and_an_unwritable_store(tmp_path):
    shard = tmp_path / "a.tar"
    shard.write_bytes(b"12345")
    store = tmp_path / "store"
    store.mkdir()
    (store / ".tmp-reach-x").write_text(".tmp-reach-x")
    store.chmod(0o555)
    try:
        problems = worker_sees([Need("shard", str(shard), 4), Need("shard", str(shard), 5),
                                Need("store", str(store), marker=".tmp-reach-x")])
    finally:
        store.chmod(0o755)
    assert problems[0] == f"shard {shard}: 5 bytes here but 4 on the client (another file at the same path)"
    if os.geteuid() == 0:  # root ignores the mode bits
        assert problems[1:] == []
    else:
        assert len(problems) == 2 and problems[1].startswith(f"store {store}: not writable")


def test_worker_sees_a_file_uri_store_only_with_the_clients_marker(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / ".tmp-reach-y").write_text(".tmp-reach-y")
    uri = store.as_uri()
    assert worker_sees([Need("store", uri, marker=".tmp-reach-y")]) == []
    assert list(store.iterdir()) == [store / ".tmp-reach-y"]  # the worker's own file is gone again
    assert worker_sees([Need("store", uri, marker=".tmp-reach-z")]) == [
        f"store {uri}: not the client's store: the marker the client just wrote there is missing"]


def test_needs_name_each_shard_weights_file_and_store_once(stage, tasks, ckpts):
    cfg = stage()
    ts = tasks(cfg)
    needs = precompute_needs(ts)
    assert [(n.kind, n.path) for n in needs] == (
        [("shard", p) for p in dict.fromkeys(t.shard_path for t in ts)]
        + [("weights", str(ckpts["teacher"])), ("weights", str(ckpts["c0"])), ("store", cfg.labels.store)])


def test_an_s3_store_is_checked_by_the_workers(s3):
    """Workers started with the S3 endpoint in their environment see an s3:// store; one that
    reads another bucket under that name is named. Nothing is left in the bucket."""
    with open_cluster(workers=2, threads_per_worker=1, device="cpu", dashboard=False, memory_limit=None,
                      announce=None) as c:
        c.client.wait_for_workers(2, timeout=60)
        blind = _addresses(c)[BLIND]
        assert len(check_reach(c, [Need("store", "s3://labels/store")])) == 2
        c.client.register_plugin(Elsewhere(Path("labels/store"), Path("other/store")))
        with pytest.raises(ComputeError) as e:
            check_reach(c, [Need("store", "s3://labels/store")])
    assert str(e.value).endswith(f"worker {blind} ({BLIND}): store s3://labels/store: not the client's store: "
                                 "the marker the client just wrote there is missing")
    assert s3.files("labels") == []
