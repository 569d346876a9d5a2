"""``gc``: only partitions no given run lock references go (dry run by default), plus temp files
of killed writes; a partition any of several configs sharing a store references stays."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from pipeline._atomic import TMP_PREFIX
from pipeline._lock import LOCK_NAME, RunLock
from pipeline.labels.paths import partition_path
from pipeline.run.gc import collect_garbage


def _partition(store: Path, n: int) -> str:
    fps = {k: f"{n:064x}" if k == "mask" else "ab" * 32 for k in ("teacher", "shard", "view", "mask", "label")}
    path = partition_path(str(store), shard="train-000000", view_epoch=0, fingerprints=fps)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"x" * (10 + n))
    return path


def _config(tmp_path: Path, name: str, store: Path, parts: list[str]) -> SimpleNamespace:
    run_dir = tmp_path / "runs" / name
    RunLock(run_dir / LOCK_NAME, store=str(store)).record(
        "precompute-0", {"tasks": name}, partitions=[{"path": p, "inputs": {}, "rows": 1, "sha256": "0" * 64} for p in parts])
    return SimpleNamespace(name=name, run_dir=run_dir, labels=SimpleNamespace(store=str(store)))


def test_gc_keeps_what_any_lock_references_and_removes_the_rest(tmp_path):
    store = tmp_path / "store"
    a, b, orphan = _partition(store, 1), _partition(store, 2), _partition(store, 3)
    tmp = Path(a).parent / f"{TMP_PREFIX}killed.parquet.x1"
    tmp.write_bytes(b"half")
    cfg_a, cfg_b = _config(tmp_path, "a", store, [a]), _config(tmp_path, "b", store, [b])

    dry = collect_garbage([cfg_a, cfg_b])
    assert sorted(p for p, _ in dry["files"]) == sorted([orphan, str(tmp)])
    assert dry["bytes"] == 13 + 4 and dry["kept"] == 2
    assert Path(orphan).exists() and tmp.exists()

    only_a = collect_garbage([cfg_a])  # b's partition is unreferenced when only a's lock is given
    assert sorted(p for p, _ in only_a["files"]) == sorted([b, orphan, str(tmp)])

    done = collect_garbage([cfg_a, cfg_b], delete=True)
    assert done["bytes"] == 17
    assert Path(a).exists() and Path(b).exists() and not Path(orphan).exists() and not tmp.exists()
    assert collect_garbage([cfg_a, cfg_b])["files"] == []
