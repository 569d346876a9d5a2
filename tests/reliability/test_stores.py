"""Damaged label stores: a flipped byte, a truncated file, a partition from another mask spec or
view epoch, rows reordered, a missing partition. ``labels verify`` and the trainer (a ``run``
after the damage, with the last training stage still to do) refuse naming the file; nothing
trains on wrong labels (no checkpoint c2 appears); a missing partition is recomputed.

The "forged" cases also rewrite the run lock's sha256 to the damaged file's, so the refusal
must come from the checks behind the checksum (fingerprints, keys, views)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline._fingerprint import sha256_file
from tests.reliability.conftest import snapshot
from tests.reliability.helpers import cli, main_in_process

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

LOCK = Path("runs/tiny/run.lock.json")


def _before_train1(b, which: str = "ab") -> tuple[dict, Path]:
    """The baseline store with train-1 still to run; returns (lock, a precompute-1 partition)."""
    b.restore(which)
    lock_path = b.work / LOCK
    lock = json.loads(lock_path.read_text())
    del lock["stages"]["train-1"]
    lock_path.write_text(json.dumps(lock))
    (b.work / "runs/tiny/checkpoints/c2.pth").unlink()
    (b.work / "runs/tiny/train/resume.json").unlink()
    return lock, Path(lock["stages"]["precompute-1"]["partitions"][1]["path"])


def _forge(b, lock: dict, part: Path) -> None:
    for p in lock["stages"]["precompute-1"]["partitions"]:
        if p["path"] == str(part):
            p["sha256"] = sha256_file(part)
    (b.work / LOCK).write_text(json.dumps(lock))


def _flip(part: Path, lock, b) -> None:
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0x10
    part.write_bytes(bytes(data))


def _truncate(part: Path, lock, b) -> None:
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])


def _other_mask(part: Path, lock, b) -> None:
    """B's partition of the same shard and view epoch (another student checkpoint -> other masks)."""
    other = json.loads((b.work / "runs/tiny-b/run.lock.json").read_text())
    src = next(p["path"] for p in other["stages"]["precompute-1"]["partitions"] if "train-000001" in p["path"])
    assert src != str(part)
    part.write_bytes(Path(src).read_bytes())


def _other_view_epoch(part: Path, lock, b) -> None:
    """The same shard's partition of view epoch 0 (other views) under the epoch-1 name."""
    src = next(p["path"] for p in lock["stages"]["precompute-0"]["partitions"] if "train-000001" in p["path"])
    part.write_bytes(Path(src).read_bytes())


def _reorder(part: Path, lock, b) -> None:
    """Rows reversed, footer metadata kept: every row still well-formed, in the wrong order."""
    f = pq.ParquetFile(part)
    table = f.read()
    table = table.take(list(reversed(range(table.num_rows))))
    meta = {k: v for k, v in (f.metadata.metadata or {}).items() if not k.startswith(b"ARROW")}
    with pq.ParquetWriter(part, table.schema.remove_metadata(), compression="zstd") as w:
        w.write_table(table)
        w.add_key_value_metadata(meta)


# damage, forge the lock's sha256 too?, what the trainer's message says, does `labels verify` see
# it even with a forged lock (it has no shard to compare row order with)?
DAMAGE = {
    "flipped byte": (_flip, False, "sha256", True),
    "truncated file": (_truncate, False, "sha256", True),
    "partition of another mask spec": (_other_mask, False, "sha256", True),
    "partition of another mask spec (lock sha256 forged)": (_other_mask, True, "fingerprints", True),
    "partition of another view epoch (lock sha256 forged)": (_other_view_epoch, True, "fingerprints", True),
    "rows reordered": (_reorder, False, "sha256", True),
    "rows reordered (lock sha256 forged)": (_reorder, True, "row 0", False),
}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_damaged_partition_is_refused(baseline, what, tally):
    b = baseline
    lock, part = _before_train1(b)
    damage, forge, why, verify_sees = DAMAGE[what]
    damage(part, lock, b)
    if forge:
        _forge(b, lock, part)
    code, out = main_in_process("labels", "verify", "store", "--lock", str(LOCK), cwd=b.work)
    if verify_sees:
        assert code != 0 and str(part.relative_to(b.work)) in out, out
        tally("store", what, f"`labels verify`: exit {code} naming the file")
    else:
        assert code == 0, out
        tally("store", what, "`labels verify`: passes (checksum forged, rows well-formed: only the trainer "
              "can compare row order with the shard)", ok=1)
    code, out = main_in_process("run", "a.yaml", cwd=b.work)
    assert code == 4, out
    assert str(part) in out and why in out, out
    assert not (b.work / "runs/tiny/checkpoints/c2.pth").exists()  # nothing trained on wrong labels
    assert "train-1" not in json.loads((b.work / LOCK).read_text())["stages"]
    tally("store", what, "`run`: trainer refused, exit 4 naming the file; no checkpoint written")


def test_missing_partition_is_named_then_recomputed(baseline, tally):
    b = baseline
    lock, part = _before_train1(b, "a")
    part.unlink()
    code, out = main_in_process("labels", "verify", "store", "--lock", str(LOCK), cwd=b.work)
    assert code != 0 and str(part.relative_to(b.work)) in out and "missing" in out, out
    tally("store", "missing partition", f"`labels verify`: exit {code} naming the file as missing")
    r = cli("run", "a.yaml", cwd=b.work)  # a child with 1 thread, as the baseline (CPU float sums depend on it)
    code, out = r.returncode, r.stdout + r.stderr
    assert code == 0, out
    assert "computed 100, reused 0, cached partitions 1/2" in out, out
    assert snapshot(b.work, ("tiny",)) == b.a
    tally("store", "missing partition", "`run`: recomputed exactly that partition (1 of 2), then byte-identical results")
