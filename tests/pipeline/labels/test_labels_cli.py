"""`mkd-pipeline labels inspect` and `labels verify`, as a user runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main

from .conftest import N


def run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_inspect_text_and_json(write, data, capsys):
    path = write().path
    code, out, _ = run(capsys, "labels", "inspect", path)
    assert code == 0
    for text in (f"rows        {N:,}", "top-5 + lse of 50 classes", "teacher top-1 agrees with label", "mean kept fraction",
                 "shard       train-000000   view epoch 0", "topk_logit"):
        assert text in out, text
    code, out, _ = run(capsys, "labels", "inspect", path, "--json")
    info = json.loads(out)
    assert code == 0 and info["rows"] == N and info["bytes"] == os.path.getsize(path)
    top1 = data["logits"].argmax(1).numpy()
    assert info["teacher_top1_agreement"] == pytest.approx((top1 == data["labels"]).mean())
    assert info["mean_kept_fraction"] == pytest.approx(data["keep"].mean())
    assert 0.5 < info["mean_topk_mass"] <= 1.0
    assert info["metadata"]["fingerprints"]["teacher"] and [c["name"] for c in info["columns"]][:2] == ["key", "label"]


@pytest.mark.parametrize("policy", ["lowres", "tome"])
def test_inspect_a_forward_policy_says_its_kept_fraction_is_not_applicable(write, data, metadata, capsys, policy):
    # a forward policy's rows store an empty keep set (precompute's _keep_sets): the teacher saw the
    # whole view, so a mean kept fraction of 0 would be false
    md = {**metadata, "specs": {"mask": {"policy": policy, "keep": 12, "tolerance": 0}}}
    path = write(metadata=md, keep=np.zeros_like(data["keep"])).path
    code, out, _ = run(capsys, "labels", "inspect", path, "--json")
    info = json.loads(out)
    assert code == 0 and info["mean_kept_fraction"] is None
    assert info["forward_policy"] == {"policy": policy, "keep": 12, "keep_fraction": pytest.approx(12 / 49)}
    code, out, _ = run(capsys, "labels", "inspect", path)
    line = next(x for x in out.splitlines() if x.startswith("mean kept fraction"))
    assert code == 0 and f"n/a (policy {policy} keeps no patch set" in line and "keep 12 of 49 = 0.245" in line
    # a keep-set policy's partition, and a forward policy's with all patches, still report the fraction
    for mask in ({"policy": "student", "keep": 24}, {"policy": policy, "keep": None}):
        path = write(metadata={**metadata, "specs": {"mask": mask}}).path
        info = json.loads(run(capsys, "labels", "inspect", path, "--json")[1])
        assert info["forward_policy"] is None and info["mean_kept_fraction"] == pytest.approx(data["keep"].mean())


def test_inspect_all_logits_directory_and_bad_file(write, data, capsys, tmp_path):
    path = write(path=str(tmp_path / "store" / "all.parquet"), target=data["logits"], num_classes=None).path
    code, out, _ = run(capsys, "labels", "inspect", path, "--json")
    assert code == 0 and json.loads(out)["mean_topk_mass"] is None
    code, out, _ = run(capsys, "labels", "inspect", str(tmp_path / "store"))
    assert code == 0 and out.strip() == path
    Path(path).write_bytes(Path(path).read_bytes()[:-100])
    code, _, err = run(capsys, "labels", "inspect", path)
    assert code == 4 and f"error: {path}: not a readable Parquet file" in err


def _lock(store: Path, entries: list[dict], name="run.lock.json") -> Path:
    lock = {"lock_version": 1, "store": str(store), "stages": {"precompute-0": {"partitions": entries}}}
    (store / name).write_text(json.dumps(lock))
    return store / name


def _entry(result, store: Path) -> dict:
    from pipeline.labels import open_partition

    with open_partition(result.path) as part:  # a run lock records the task's fingerprints as its inputs
        inputs = part.metadata["fingerprints"]
    return {"path": os.path.relpath(result.path, store), "inputs": inputs,
            "rows": result.rows, "sha256": result.sha256}


def test_verify_good_store_with_lock(write, metadata, tmp_path, capsys):
    store = tmp_path / "store"
    first = write()
    second = write(metadata={**metadata, "view_epoch": 1},
                   path=str(store / "x" / "train-000000" / "e0001.parquet"))
    _lock(store, [_entry(first, store), _entry(second, store)])
    code, out, _ = run(capsys, "labels", "verify", str(store))
    assert code == 0 and "2 of 2 partitions OK" in out and "against 1 run lock" in out


def test_verify_lists_every_bad_file_and_exits_1(write, metadata, tmp_path, capsys):
    store = tmp_path / "store"
    good = write()
    changed = write(metadata={**metadata, "view_epoch": 1}, path=str(store / "a" / "s" / "e0001.parquet"))
    corrupt = write(metadata={**metadata, "view_epoch": 2}, path=str(store / "a" / "s" / "e0002.parquet"))
    raw = bytearray(Path(corrupt.path).read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    Path(corrupt.path).write_bytes(bytes(raw))
    missing = {**_entry(good, store), "path": "a/s/e0009.parquet"}
    _lock(store, [_entry(good, store), {**_entry(changed, store), "sha256": "0" * 64}, missing])
    (store / "a" / "s" / ".tmp-e0003.parquet.abc").write_bytes(b"half")
    code, out, err = run(capsys, "labels", "verify", str(store))
    assert code == 1 and "3 bad or missing partition file(s)" in err
    bad = [line for line in out.splitlines() if line.startswith("BAD")]
    assert len(bad) == 3
    assert any(changed.path in line and "sha256 is" in line for line in bad)
    assert any(corrupt.path in line and "corrupt" in line for line in bad)  # no lock entry: page checksums catch it
    assert any("e0009.parquet: missing" in line for line in bad)
    assert "temp file of an interrupted write" in out and "1 of 3 partitions OK" in out


def test_verify_refuses_a_missing_store_and_a_malformed_lock(write, tmp_path, capsys):
    code, _, err = run(capsys, "labels", "verify", str(tmp_path / "nowhere"))
    assert code == 4 and "no label store here" in err
    write()
    lock = tmp_path / "bad.lock.json"
    lock.write_text(json.dumps({"lock_version": 1, "stages": {"s": {"partitions": [{"path": "x", "rows": -1}]}}}))
    code, _, err = run(capsys, "labels", "verify", str(tmp_path / "store"), "--lock", str(lock))
    assert code == 4 and "bad.lock.json: run lock field stages.s.partitions.0" in err
