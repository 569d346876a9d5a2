"""``gc``: only partitions no run lock references go (dry run by default), plus temp files of
killed writes. Kept: what the given configs' locks and every run registered with the store
reference, what a live precompute announced (and its temp files), files younger than the grace
period; a run folder whose lock is held is left alone."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from pipeline._atomic import TMP_PREFIX
from pipeline._lock import LOCK_NAME, RunLock
from pipeline.labels.paths import partition_path
from pipeline.run.claims import announce, register_run
from pipeline.run.folder_lock import hold_run_folder
from pipeline.run.gc import collect_garbage


def _partition(store: Path, n: int) -> str:
    fps = {k: f"{n:064x}" if k == "mask" else "ab" * 32 for k in ("teacher", "shard", "view", "mask", "label")}
    path = partition_path(str(store), shard="train-000000", view_epoch=0, fingerprints=fps)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"x" * (10 + n))
    return path


def _config(tmp_path: Path, name: str, store: Path, parts: list[str], *, register: bool = False) -> SimpleNamespace:
    run_dir = tmp_path / "runs" / name
    lock = RunLock(run_dir / LOCK_NAME, store=str(store))
    lock.record("precompute-0", {"tasks": name}, partitions=[{"path": p, "inputs": {}, "rows": 1, "sha256": "0" * 64} for p in parts])
    if register:
        register_run(str(store), lock.path)
    return SimpleNamespace(name=name, run_dir=run_dir, labels=SimpleNamespace(store=str(store)))


def _listed(report) -> list[str]:
    return sorted(p for p, _ in report["files"])


def test_gc_keeps_what_any_lock_references_and_removes_the_rest(tmp_path):
    store = tmp_path / "store"
    a, b, orphan = _partition(store, 1), _partition(store, 2), _partition(store, 3)
    tmp = Path(a).parent / f"{TMP_PREFIX}killed.parquet.x1"
    tmp.write_bytes(b"half")
    cfg_a, cfg_b = _config(tmp_path, "a", store, [a]), _config(tmp_path, "b", store, [b])

    dry = collect_garbage([cfg_a, cfg_b], grace_s=0)
    assert _listed(dry) == sorted([orphan, str(tmp)])
    assert dry["bytes"] == 13 + 4 and dry["kept"] == 2
    assert Path(orphan).exists() and tmp.exists()

    # b's lock predates the store's run registry: only naming its config keeps its partition
    assert _listed(collect_garbage([cfg_a], grace_s=0)) == sorted([b, orphan, str(tmp)])

    done = collect_garbage([cfg_a, cfg_b], delete=True, grace_s=0)
    assert done["bytes"] == 17
    assert Path(a).exists() and Path(b).exists() and not Path(orphan).exists() and not tmp.exists()
    assert collect_garbage([cfg_a, cfg_b], grace_s=0)["files"] == []


def test_gc_of_one_config_keeps_every_registered_run_of_the_store(tmp_path):
    store = tmp_path / "store"
    a, b, orphan = _partition(store, 1), _partition(store, 2), _partition(store, 3)
    cfg_a = _config(tmp_path, "a", store, [a], register=True)
    cfg_b = _config(tmp_path, "b", store, [b], register=True)
    done = collect_garbage([cfg_a], delete=True, grace_s=0)
    assert _listed(done) == [orphan] and done["kept"] == 2
    assert Path(b).exists()

    # a registered run that has recorded nothing yet keeps its record
    (cfg_b.run_dir / LOCK_NAME).unlink()
    assert _listed(collect_garbage([cfg_a], delete=True, grace_s=0)) == [b]
    assert len(list((store / ".mkd" / "runs").glob("*.json"))) == 2
    # one whose folder is gone no longer keeps anything, and its record goes
    cfg_b.run_dir.rename(tmp_path / "elsewhere")
    collect_garbage([cfg_a], delete=True, grace_s=0)
    assert len(list((store / ".mkd" / "runs").glob("*.json"))) == 1


def test_gc_keeps_what_a_live_precompute_announced_until_it_ends(tmp_path):
    store = tmp_path / "store"
    a, fresh = _partition(store, 1), _partition(store, 2)
    coming = str(Path(fresh).parent / "v00000000-feedfeedfeedfeed.parquet")  # a task is writing it now
    in_flight = Path(fresh).parent / f"{TMP_PREFIX}{Path(coming).name}.k3x9"
    cfg_a = _config(tmp_path, "a", store, [a])
    cfg_c = _config(tmp_path, "c", store, [])
    with announce(str(store), cfg_c.run_dir / LOCK_NAME, "precompute-0", [fresh, coming]):
        in_flight.write_bytes(b"half")
        report = collect_garbage([cfg_a], delete=True, grace_s=0)
        assert report["files"] == [] and report["announced"] == 1 and report["stale_intents"] == 0
        assert Path(fresh).exists() and in_flight.exists()
    # the stage ended without recording them (it failed): now they are garbage
    in_flight.unlink()
    assert _listed(collect_garbage([cfg_a], grace_s=0)) == [fresh]


def test_gc_ignores_and_removes_an_intent_its_killed_writer_left(tmp_path):
    store = tmp_path / "store"
    orphan = _partition(store, 3)
    cfg = _config(tmp_path, "a", store, [])
    intents = store / ".mkd" / "intents"
    intents.mkdir(parents=True)
    (intents / "0123456789abcdef-999999.json").write_text(f'{{"partitions": ["{orphan}"]}}')  # nobody holds its flock
    report = collect_garbage([cfg], delete=True, grace_s=0)
    assert _listed(report) == [orphan] and report["stale_intents"] == 1
    assert not any(intents.iterdir())


def test_gc_never_deletes_young_files(tmp_path):
    store = tmp_path / "store"
    old, young = _partition(store, 1), _partition(store, 2)
    past = time.time() - 7200
    os.utime(old, (past, past))
    cfg = _config(tmp_path, "a", store, [])
    report = collect_garbage([cfg], delete=True, grace_s=3600)
    assert _listed(report) == [old] and report["young"] == 1 and Path(young).exists()


def test_gc_leaves_the_temp_files_of_a_run_in_progress(tmp_path):
    store = tmp_path / "store"
    cfg = _config(tmp_path, "a", store, [])
    ckpt_tmp = cfg.run_dir / "checkpoints" / f"{TMP_PREFIX}c1.pth.x8"
    ckpt_tmp.parent.mkdir(parents=True)
    ckpt_tmp.write_bytes(b"partial")
    with hold_run_folder(cfg.run_dir) as held:
        assert held
        report = collect_garbage([cfg], delete=True, grace_s=0)
        assert report["live_runs"] == [os.path.abspath(cfg.run_dir)] and ckpt_tmp.exists()
    assert _listed(collect_garbage([cfg], delete=True, grace_s=0)) == [str(ckpt_tmp)]
    assert not ckpt_tmp.exists()


def test_gc_collects_a_file_uri_store_like_its_folder(tmp_path):
    store = tmp_path / "store"
    kept, orphan = _partition(store, 1), _partition(store, 2)
    cfg = _config(tmp_path, "a", store, [kept], register=True)
    cfg.labels.store = f"file://{store}"  # the same folder named by URI (pyarrow.fs)
    report = collect_garbage([cfg], delete=True, grace_s=0)
    assert _listed(report) == [orphan] and report["kept"] == 1 and report["not_collected"] == []
    assert Path(kept).exists() and not Path(orphan).exists()


def test_gc_of_a_remote_store_removes_only_temp_files_of_killed_writes(s3, tmp_path):
    """An s3:// store (a local S3 server): its partitions are not collected (no registry, no
    flock there), said so; its temp objects older than the grace period go; the local store
    beside it is collected as ever."""
    store = "s3://labels/store"
    part = "labels/store/teacher=t/shard=s/epoch=0/v0-d.parquet"
    temp = "labels/store/teacher=t/shard=s/epoch=0/.tmp-v0-e.parquet.0a1b2c"
    for key in (part, temp):
        with s3.fs.open_output_stream(key) as f:
            f.write(b"x" * 7)
    local = tmp_path / "store"
    orphan = _partition(local, 1)
    remote = SimpleNamespace(name="r", run_dir=tmp_path / "runs" / "r", labels=SimpleNamespace(store=store))
    young = collect_garbage([remote, _config(tmp_path, "a", local, [])])
    assert young["not_collected"] == [store] and _listed(young) == [] and young["young"] == 2
    report = collect_garbage([remote, _config(tmp_path, "a", local, [])], grace_s=0, delete=True)
    assert report["not_collected"] == [store]
    assert _listed(report) == sorted([orphan, f"s3://{temp}"]) and report["bytes"] == 11 + 7
    assert s3.files("labels") == [part]


def test_gc_cli_says_a_remote_store_is_not_collected(s3, tmp_path):
    from tests.pipeline.config.cases import write_manifest
    from tests.reliability.helpers import main_in_process, stage

    write_manifest(tmp_path / "data")
    stage(tmp_path / "s3.yaml", labels__store="s3://labels/store")
    code, out = main_in_process("gc", "s3.yaml", "--yes", cwd=tmp_path)
    assert code == 0, out
    assert "not collected: s3://labels/store: gc collects the partitions of local and file:// stores only" in out
