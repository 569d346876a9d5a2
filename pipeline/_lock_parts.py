"""A run lock's partition records: one Parquet file per stage record, written once, never rewritten.

The lock file itself (``run.lock.json``) stays small: a stage that wrote label partitions names
its records file (``run.lock.d/<stage>-<sha256[:16]>.records``, content-addressed) with the
file's sha256 and record count. It is Parquet, but not named ``.parquet``, so that a lock kept in
a store's root never has its records taken for label partitions. Recording a stage writes one new
records file and the small lock file; nothing else is rewritten. Why Parquet and not JSON lines or SQLite: docs/design.md.

Columns: ``path``, ``rows``, ``sha256`` and one ``inputs.<name>`` string column per input
fingerprint (repeated fingerprints such as the teacher's cost a dictionary entry, hex digests
compress to about half); a record of another shape is kept whole as JSON in ``record_json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline._atomic import write_atomic
from pipeline._fingerprint import sha256_bytes
from pipeline.errors import StoreError

INPUT_PREFIX = "inputs."
RECORD_JSON = "record_json"
SUFFIX = ".records"  # Parquet, but not ".parquet": never listed as a label partition
_FIELDS = {"path", "inputs", "rows", "sha256"}


def parts_dir(lock_path: str | Path) -> Path:
    """The folder of a lock's records files: ``run.lock.json`` -> ``run.lock.d``."""
    p = Path(lock_path)
    return p.with_name(p.name.removesuffix(".json") + ".d")


def write_parts(lock_path: str | Path, stage: str, partitions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Write a stage's partition records beside the lock; returns the reference the lock keeps.

    Returns:
        ``{"path": relative to the lock's folder, "sha256": of the file, "count": records}``.

    Raises:
        OutputError: (exit 6) the file cannot be written.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(_table(partitions), sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    digest = sha256_bytes(data)
    rel = f"{parts_dir(lock_path).name}/{stage}-{digest[:16]}{SUFFIX}"
    write_atomic(Path(lock_path).parent / rel, data)  # content-addressed: same name, same bytes
    return {"path": rel, "sha256": digest, "count": len(partitions)}


def read_parts(lock_path: str | Path, ref: Mapping[str, Any]) -> PartitionRecords:
    """The partition records a lock's reference names, checked against its sha256 and count.

    Raises:
        StoreError: the records file is missing, changed or unreadable (naming it).
    """
    path = Path(lock_path).parent / ref["path"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StoreError(f"{path}: cannot read the run lock's partition records ({e})") from e
    if sha256_bytes(data) != ref["sha256"]:
        raise StoreError(f"{path}: the run lock's partition records changed since they were written (sha256 differs)")
    try:
        records = PartitionRecords(pq.ParquetFile(pa.BufferReader(data)), str(path))
    except (pa.ArrowException, OSError) as e:
        raise StoreError(f"{path}: cannot read the run lock's partition records ({e})") from e
    if len(records) != ref["count"]:
        raise StoreError(f"{path}: {len(records)} partition records, the run lock says {ref['count']}")
    return records


class PartitionRecords(Sequence[Mapping[str, Any]]):
    """A records file's records, read column by column as they are asked for: ``status`` reads the
    paths and sha256 of 384k records without building a dict for each."""

    def __init__(self, file: pq.ParquetFile, where: str) -> None:
        self._file, self._where = file, where
        self._columns: dict[str, list[Any]] = {}
        self.input_names = [n.removeprefix(INPUT_PREFIX) for n in file.schema_arrow.names if n.startswith(INPUT_PREFIX)]
        whole = self.column(RECORD_JSON)
        self._whole = {i: json.loads(w) for i, w in enumerate(whole) if w is not None}

    def column(self, name: str) -> list[Any]:
        """One column's values, in record order (read once)."""
        if name not in self._columns:
            try:
                self._columns[name] = self._file.read(columns=[name]).column(0).to_pylist()
            except (pa.ArrowException, OSError) as e:
                raise StoreError(f"{self._where}: cannot read the run lock's partition records ({e})") from e
        return self._columns[name]

    def __len__(self) -> int:
        return self._file.metadata.num_rows

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._whole[i] if i in self._whole else PartitionRecord(self, i)

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        whole = self._whole
        for i in range(len(self)):
            yield whole[i] if i in whole else PartitionRecord(self, i)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and all(a == b for a, b in zip(self, other))

    def to_list(self) -> list[dict[str, Any]]:
        """Every record as a plain dict (what JSON can hold)."""
        return _records(self._file.read())


class PartitionRecord(Mapping[str, Any]):
    """One record of :class:`PartitionRecords` (``path``, ``inputs``, ``rows``, ``sha256``)."""

    __slots__ = ("_i", "_records")

    def __init__(self, records: PartitionRecords, i: int) -> None:
        self._records, self._i = records, i

    def __getitem__(self, key: str) -> Any:
        r = self._records
        column = r._columns.get(key)  # one class with PartitionRecords: a column read already, the fast way
        if column is not None:
            return column[self._i]
        if key == "inputs":
            return {k: r.column(INPUT_PREFIX + k)[self._i] for k in r.input_names}
        if key in _FIELDS:
            return r.column(key)[self._i]
        raise KeyError(key)

    def __iter__(self):
        return iter(("path", "inputs", "rows", "sha256"))

    def __len__(self) -> int:
        return len(_FIELDS)


def prune_parts(lock_path: str | Path, keep: set[str]) -> None:
    """Delete the records files no stage names any more (a re-recorded stage's old one, or one a
    killed save wrote before the lock named it)."""
    folder = parts_dir(lock_path)
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if f"{folder.name}/{f.name}" not in keep and f.name.endswith(SUFFIX):
            f.unlink(missing_ok=True)


def _regular(p: Mapping[str, Any], keys: list[str]) -> bool:
    inputs = p.get("inputs")
    return (set(p) == _FIELDS and isinstance(inputs, dict) and sorted(inputs) == keys
            and all(v is None or isinstance(v, str) for v in inputs.values())
            and isinstance(p["path"], str) and isinstance(p["sha256"], str) and type(p["rows"]) is int)


def _table(partitions: Sequence[Mapping[str, Any]]) -> pa.Table:
    keys = sorted({k for p in partitions if isinstance(p.get("inputs"), dict) for k in p["inputs"]})
    regular = [_regular(p, keys) for p in partitions]
    cols: dict[str, pa.Array] = {
        "path": pa.array([p["path"] if r else None for p, r in zip(partitions, regular)], pa.string()),
        "rows": pa.array([p["rows"] if r else None for p, r in zip(partitions, regular)], pa.int64()),
        "sha256": pa.array([p["sha256"] if r else None for p, r in zip(partitions, regular)], pa.string()),
    }
    for k in keys:
        cols[INPUT_PREFIX + k] = pa.array([p["inputs"][k] if r else None for p, r in zip(partitions, regular)], pa.string())
    cols[RECORD_JSON] = pa.array([None if r else json.dumps(dict(p), sort_keys=True) for p, r in zip(partitions, regular)],
                                 pa.string())
    return pa.table(cols)


def _records(table: pa.Table) -> list[dict[str, Any]]:
    """Every record of a records file as a plain dict."""
    keys = [n.removeprefix(INPUT_PREFIX) for n in table.column_names if n.startswith(INPUT_PREFIX)]
    inputs = zip(*(table.column(INPUT_PREFIX + k).to_pylist() for k in keys)) if keys else iter(lambda: (), None)
    out = []
    for path, rows, sha, whole, values in zip(table.column("path").to_pylist(), table.column("rows").to_pylist(),
                                              table.column("sha256").to_pylist(), table.column(RECORD_JSON).to_pylist(),
                                              inputs):
        out.append(json.loads(whole) if whole is not None else
                   {"path": path, "inputs": dict(zip(keys, values)), "rows": rows, "sha256": sha})
    return out
