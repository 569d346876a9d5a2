"""A damaged partition is found (whichever column the damage hit), moved into the store's
quarantine folder where nothing lists it as a partition, and `labels verify --repair` does it
for a whole store."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.labels import list_partitions
from pipeline.labels.heal import (
    DAMAGED_SUFFIX,
    QUARANTINE,
    damaged_recorded,
    partition_problem,
    quarantine,
)

from .test_labels_cli import _entry, _lock


def flip(path: str, column: str, n: int) -> None:
    """Invert ``n`` bytes inside the first data page of ``column`` (past the page header)."""
    md = pq.ParquetFile(path).metadata.row_group(0)
    col = next(md.column(i) for i in range(md.num_columns) if md.column(i).path_in_schema.split(".")[0] == column)
    raw = bytearray(Path(path).read_bytes())
    start = col.data_page_offset + min(64, col.total_compressed_size - n)  # inside the page's data
    for i in range(start, start + n):
        raw[i] ^= 0xFF
    Path(path).write_bytes(bytes(raw))


@pytest.mark.parametrize("column,n", [("keep", 64), ("topk_logit", 32)])
def test_damage_in_any_column_is_found_and_quarantined(write, tmp_path, column, n):
    part = write()
    assert partition_problem(part.path) is None
    flip(part.path, column, n)
    assert "corrupt column data" in partition_problem(part.path)
    assert damaged_recorded([{"path": part.path, "sha256": part.sha256}])[0][0] == part.path
    store = str(tmp_path / "store")
    moved = quarantine(store, part.path)
    assert not Path(part.path).exists() and Path(moved).is_file() and list_partitions(store) == []
    assert Path(moved).parent == tmp_path / "store" / QUARANTINE and moved.endswith(DAMAGED_SUFFIX)
    assert "~shard=" in Path(moved).name  # its path under the store, readable in the name


def test_verify_repair_moves_the_bad_files_aside(write, metadata, tmp_path, capsys):
    store = tmp_path / "store"
    good = write()
    bad = write(metadata={**metadata, "view_epoch": 1}, path=str(store / "a" / "s" / "e0001.parquet"))
    _lock(store, [_entry(good, store), _entry(bad, store)])
    flip(bad.path, "keep", 64)
    with pytest.raises(SystemExit) as e:
        main(["labels", "verify", str(store)])
    assert e.value.code == 1 and "--repair" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["labels", "verify", str(store), "--repair"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and f"moved {bad.path} -> {store / QUARANTINE}" in out
    assert not Path(bad.path).exists() and Path(good.path).exists()
    with pytest.raises(SystemExit) as e:  # the lock still names it: missing until a run recomputes it
        main(["labels", "verify", str(store)])
    assert e.value.code == 1 and "e0001.parquet: missing" in capsys.readouterr().out
