"""Damaged label stores: a flipped byte, a truncated file, a partition from another mask spec or
view epoch, rows reordered, a missing partition. The store is a cache: a partition that no longer
has the sha256 its run lock records, or whose pages fail their checksums, is moved into the
store's quarantine folder (named in the output) and recomputed, and the run ends with the bytes of
an undamaged run. ``labels verify`` names every damaged file.

The "forged" cases also rewrite the run lock's sha256 to the damaged file's, so the refusal
must come from the checks behind the checksum (fingerprints, keys, views): there the trainer (a
``run`` after the damage, with the last training stage still to do) refuses naming the file and
nothing trains on wrong labels (no checkpoint c2 appears)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline._fingerprint import sha256_file
from pipeline._lock import load_lock
from pipeline.labels.heal import QUARANTINE
from tests.reliability.conftest import snapshot
from tests.reliability.helpers import cli, main_in_process

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

LOCK = Path("runs/tiny/run.lock.json")


def _before_train1(b, which: str = "ab") -> tuple[dict, Path]:
    """The baseline store with train-1 still to run; returns (lock, a precompute-1 partition)."""
    b.restore(which)
    lock_path = b.work / LOCK
    lock = load_lock(lock_path)
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


def _flip_column(column: str, n: int):
    """Invert ``n`` bytes inside the first data page of ``column``, as a bad disk block would."""
    def damage(part: Path, lock, b) -> None:
        md = pq.ParquetFile(part).metadata.row_group(0)
        col = next(md.column(i) for i in range(md.num_columns) if md.column(i).path_in_schema.split(".")[0] == column)
        data = bytearray(part.read_bytes())
        start = col.data_page_offset + min(64, col.total_compressed_size - n)
        for i in range(start, start + n):
            data[i] ^= 0xFF
        part.write_bytes(bytes(data))
    return damage


def _truncate(part: Path, lock, b) -> None:
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])


def _other_mask(part: Path, lock, b) -> None:
    """B's partition of the same shard and view epoch (another student checkpoint -> other masks),
    from the baseline's copy (B need not be in the store the scenario starts from)."""
    snap = b.work / ".snap-ab"
    other = load_lock(snap / "runs/tiny-b/run.lock.json")
    src = next(p["path"] for p in other["stages"]["precompute-1"]["partitions"] if "train-000001" in p["path"])
    assert src != str(part)
    part.write_bytes((snap / Path(src).relative_to(b.work)).read_bytes())


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
    "64 bytes flipped in the keep column": (_flip_column("keep", 64), False, "sha256", True),
    "32 bytes flipped in the topk_logit pages": (_flip_column("topk_logit", 32), False, "sha256", True),
    "truncated file": (_truncate, False, "sha256", True),
    "partition of another mask spec": (_other_mask, False, "sha256", True),
    "partition of another mask spec (lock sha256 forged)": (_other_mask, True, "fingerprints", True),
    "partition of another view epoch (lock sha256 forged)": (_other_view_epoch, True, "fingerprints", True),
    "rows reordered": (_reorder, False, "sha256", True),
    "rows reordered (lock sha256 forged)": (_reorder, True, "row 0", False),
}


def _healed(b) -> dict[str, str]:
    """The snapshot of A, the quarantine folder aside."""
    return {k: v for k, v in snapshot(b.work, ("tiny",)).items() if not k.startswith(f"store/{QUARANTINE}/")}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_damaged_partition_is_healed_or_refused(baseline, what, tally):
    b = baseline
    damage, forge, why, verify_sees = DAMAGE[what]
    # healed: from A's store alone: with B's partitions of the same shard and view beside it the
    # recompute may take rows from them (incremental recomputation), and its bytes were not A's
    lock, part = _before_train1(b, "ab" if forge else "a")
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
    if not forge:  # its sha256 is not the recorded one: moved aside, recomputed
        r = cli("run", "a.yaml", cwd=b.work)  # a child with 1 thread, as the baseline (CPU float sums depend on it)
        code, out = r.returncode, r.stdout + r.stderr
        assert code == 0, out
        assert f"damaged partition {part} ({why} is" in out and f"moved to {b.work / 'store' / QUARANTINE}" in out, out
        assert len(list((b.work / "store" / QUARANTINE).iterdir())) == 1
        assert _healed(b) == b.a
        tally("store", what, "`run`: quarantined (named), recomputed, then byte-identical results")
        return
    code, out = main_in_process("run", "a.yaml", cwd=b.work)
    assert code == 4, out
    assert str(part) in out and why in out, out
    assert not (b.work / "runs/tiny/checkpoints/c2.pth").exists()  # nothing trained on wrong labels
    assert "train-1" not in load_lock(b.work / LOCK)["stages"]
    tally("store", what, "`run`: trainer refused, exit 4 naming the file; no checkpoint written")


def test_damaged_partition_no_lock_records_is_found_by_its_page_checksums(baseline, tally):
    """A stage the lock does not record (a killed run): before a partition counts as cached, every
    page is decoded against its checksum; a damaged one is quarantined and recomputed."""
    b = baseline
    b.restore("a")
    lock_path = b.work / LOCK
    lock = load_lock(lock_path)
    part = Path(lock["stages"]["precompute-1"]["partitions"][1]["path"])
    for name in ("precompute-1", "train-1"):
        del lock["stages"][name]
    lock_path.write_text(json.dumps(lock))
    (b.work / "runs/tiny/checkpoints/c2.pth").unlink()
    (b.work / "runs/tiny/train/resume.json").unlink()
    _flip_column("keep", 64)(part, lock, b)
    r = cli("run", "a.yaml", cwd=b.work)
    code, out = r.returncode, r.stdout + r.stderr
    assert code == 0, out
    assert f"damaged partition {part} (corrupt column data" in out and "cached partitions 1/2" in out, out
    assert {k: v for k, v in snapshot(b.work, ("tiny",)).items() if not k.startswith(f"store/{QUARANTINE}/")} == b.a
    tally("store", "64 bytes flipped in the keep column, stage not in the lock",
          "`run`: page checksums caught it; quarantined (named), recomputed, byte-identical results")


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
