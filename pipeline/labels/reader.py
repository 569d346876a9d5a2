"""Read a label partition: checked on open, streamed in row order as torch tensors (docs/design.md §5).

Columns go Arrow buffer -> numpy view -> torch in whole chunks (tens of thousands of rows), so
there is no per-row Python work except building the key strings; small batches are slices of a
converted chunk. Every page's CRC is verified while decoding, so a flipped byte in column data
raises :class:`StoreError` before any row of its page is handed out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from maskedkd.targets import SoftTarget, TopK
from pipeline._fingerprint import sha256_bytes
from pipeline.errors import StoreError
from pipeline.labels import paths
from pipeline.labels.schema import (
    FORMAT,
    METADATA_KEY,
    RECORD_SHA256_KEY,
    Layout,
    check_schema,
    lse_column,
    record_problem,
    unpack_keep,
)

# Rows converted to torch at once; batches smaller than this are slices of one conversion.
CHUNK_ROWS = 16384
FIELDS = ("keys", "label", "keep", "target", "view")


@dataclass(frozen=True)
class LabelBatch:
    """Consecutive rows of a partition. Fields not asked for are None (``view``: empty).

    Attributes:
        keys: the sample keys, in the shard's tar order.
        label: int64 [B] ground-truth classes.
        keep: bool [B, P], the patches the teacher saw (``.numpy()`` is zero-copy).
        target: a :class:`maskedkd.SoftTarget` ready for :func:`maskedkd.kd_loss`: top-K
            (``idx`` int64 [B, K], ``logit`` float32 [B, K], ``lse`` float32 [B], ``tau=1.0``), or
            dense with ``topk: all`` (``logit`` float32 [B, C] log-probabilities, valid logits).
        lse_tau: ``{tau: float32 [B]}``, logsumexp at the extra stored temperatures.
        view: the View's columns as written: numpy [B] or [B, W] (strings as object arrays).
    """

    keys: list[str] | None = None
    label: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    target: SoftTarget | None = None
    lse_tau: dict[float, torch.Tensor] = field(default_factory=dict)
    view: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        for value in (self.keys, self.label, self.keep, self.target):
            if value is not None:
                return len(value)
        return len(next(iter(self.view.values()), ()))

    def slice(self, start: int, stop: int) -> "LabelBatch":
        """Rows ``start:stop`` (views, no copies)."""
        cut = lambda x: None if x is None else x[start:stop]  # noqa: E731
        return LabelBatch(
            keys=cut(self.keys), label=cut(self.label), keep=cut(self.keep), target=cut(self.target),
            lse_tau={tau: v[start:stop] for tau, v in self.lse_tau.items()}, view={k: v[start:stop] for k, v in self.view.items()},
        )

    def target_at(self, tau: float) -> SoftTarget | None:
        """The target for ``kd_loss(..., tau=tau)``: top-K with the logsumexp stored for ``tau``."""
        if self.target is None or self.target.dense or float(tau) == 1.0:
            return self.target  # a dense target fits any temperature
        if float(tau) not in self.lse_tau:
            raise ValueError(f"no logsumexp stored for tau={tau}; stored: 1.0, {sorted(self.lse_tau)}")
        return replace(self.target, lse=self.lse_tau[float(tau)], tau=float(tau))


class Partition:
    """An open, checked label partition (see :func:`open_partition`).

    Attributes:
        path: as given to :func:`open_partition`.
        metadata: the fingerprint record (``manifests/label-partition.schema.json``).
        layout: K, classes, patches, extra temperatures, view column names.
        num_rows: row count.
        num_bytes: file size.
    """

    def __init__(self, path: str, file: pq.ParquetFile, metadata: dict[str, Any], layout: Layout, num_bytes: int):
        self.path = path
        self.metadata = metadata
        self.layout = layout
        self.num_rows = file.metadata.num_rows
        self.num_bytes = num_bytes
        self._file = file
        self._keys: list[str] | None = None

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the columns."""
        return self._file.schema_arrow

    @property
    def file_metadata(self) -> pq.FileMetaData:
        """The Parquet footer: row groups, column chunks, sizes, encodings."""
        return self._file.metadata

    @property
    def keys(self) -> list[str]:
        """All keys in row order."""
        if self._keys is None:
            self._keys = self._read(["key"]).column(0).to_pylist()
        return self._keys

    def iter_batches(self, batch_size: int = 8192, *, columns: Iterable[str] | None = None) -> Iterator[LabelBatch]:
        """Stream the rows in order, ``batch_size`` at a time (the last batch may be smaller).

        Args:
            batch_size: rows per batch.
            columns: which :class:`LabelBatch` fields to fill (``keys``, ``label``, ``keep``,
                ``target``, ``view``); all by default. A trainer needs ``("keys", "target")``.

        Raises:
            StoreError: column data is corrupt (page checksum, decoding), naming the file.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        wanted = self._wanted(columns)
        chunk = batch_size * max(1, CHUNK_ROWS // batch_size)
        with _StoreErrors(self.path):
            for record_batch in self._file.iter_batches(batch_size=chunk, columns=self._arrow_columns(wanted), use_threads=False):
                converted = self._convert(record_batch, wanted)
                for start in range(0, record_batch.num_rows, batch_size):
                    yield converted if batch_size >= record_batch.num_rows else converted.slice(start, start + batch_size)

    def __iter__(self) -> Iterator[LabelBatch]:
        return self.iter_batches()

    def read_all(self, *, columns: Iterable[str] | None = None) -> LabelBatch:
        """All rows as one batch (precompute's reuse path: ``keep.numpy()`` for the keep sets)."""
        wanted = self._wanted(columns)
        table = self._read(self._arrow_columns(wanted)).combine_chunks()
        batches = table.to_batches()
        empty = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in table.schema], schema=table.schema)
        return self._convert(batches[0] if batches else empty, wanted)

    def close(self) -> None:
        """Release the file."""
        self._file.close()

    def __enter__(self) -> "Partition":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Partition({self.path!r}, rows={self.num_rows}, topk={self.layout.topk})"

    def _wanted(self, columns: Iterable[str] | None) -> tuple[str, ...]:
        wanted = FIELDS if columns is None else tuple(columns)
        unknown = set(wanted) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown column group(s) {sorted(unknown)}; choose from {FIELDS}")
        return wanted

    def _arrow_columns(self, wanted: Sequence[str]) -> list[str]:
        names = {"keys": ["key"], "label": ["label"], "keep": ["keep"], "view": list(self.layout.view_columns)}
        if self.layout.topk == "all":
            names["target"] = ["logits"]
        else:
            names["target"] = ["topk_idx", "topk_logit", "lse"] + [lse_column(t) for t in self.layout.lse_taus]
        return [c for group in wanted for c in names[group]]

    def _read(self, columns: list[str]) -> pa.Table:
        with _StoreErrors(self.path):
            return self._file.read(columns=columns, use_threads=False)

    def _convert(self, rb: pa.RecordBatch, wanted: Sequence[str]) -> LabelBatch:
        out: dict[str, Any] = {}
        if "keys" in wanted:
            out["keys"] = rb.column("key").to_pylist()
        if "label" in wanted:
            out["label"] = torch.from_numpy(rb.column("label").to_numpy().astype(np.int64))
        if "keep" in wanted:
            keep = rb.column("keep")
            width = keep.type.byte_width
            packed = np.frombuffer(keep.buffers()[1], np.uint8, count=len(keep) * width, offset=keep.offset * width)
            out["keep"] = torch.from_numpy(unpack_keep(packed.reshape(len(keep), width), self.layout.num_patches))
        if "target" in wanted and self.layout.topk == "all":
            out["target"] = SoftTarget(_float32(_matrix(rb.column("logits"))))
        elif "target" in wanted:
            lse = torch.from_numpy(rb.column("lse").to_numpy().copy())
            idx = torch.from_numpy(_matrix(rb.column("topk_idx")).astype(np.int64))
            # topk_logit holds logit - lse (see the writer); give the caller the logits back.
            logit = _float32(_matrix(rb.column("topk_logit"))).add_(lse[:, None])
            out["target"] = TopK(idx=idx, logit=logit, lse=lse)
            out["lse_tau"] = {t: torch.from_numpy(rb.column(lse_column(t)).to_numpy().copy()) for t in self.layout.lse_taus}
        if "view" in wanted:
            out["view"] = {name: _numpy(rb.column(name)) for name in self.layout.view_columns}
        return LabelBatch(**out)


def open_partition(
    path: str,
    *,
    expect: Mapping[str, Any] | None = None,
    expect_keys: Sequence[str] | None = None,
    sha256: str | None = None,
) -> Partition:
    """Open a partition and check it is intact and the one the caller means.

    Args:
        path: local path or ``pyarrow.fs`` URI.
        expect: metadata the partition must have, compared field by field (nested mappings
            recursively), e.g. ``{"fingerprints": {"teacher": t, "view": v, "mask": m},
            "shard": "train-000000", "view_epoch": 3}``.
        expect_keys: the shard's keys in tar order; the partition's rows must be exactly these,
            in this order.
        sha256: the file's sha256 as recorded in the run lock; checked before anything else
            (one extra pass over the file, which catches a flipped byte anywhere).

    Returns:
        The open :class:`Partition` (a context manager).

    Raises:
        StoreError: missing, truncated or corrupt file, wrong schema, another format version,
            metadata that differs from ``expect``, or rows not in ``expect_keys`` order; the
            message names the file and the field.
    """
    fs, fs_path = paths.resolve(path)
    with _StoreErrors(path, "cannot open the file"):
        if sha256 is not None and (got := paths.file_sha256(path)) != sha256:
            raise StoreError(f"{path}: sha256 is {got}, the run lock records {sha256}: the file changed after it was written")
        source = fs.open_input_file(fs_path)
    try:
        with _StoreErrors(path, "not a readable Parquet file (truncated or corrupt)"):
            file = pq.ParquetFile(source, page_checksum_verification=True)
            arrow_schema = file.schema_arrow
        record = _record(file.metadata, path)
        layout = Layout.from_json(record["layout"])
        check_schema(arrow_schema, layout, path)
        group_rows = sum(file.metadata.row_group(g).num_rows for g in range(file.metadata.num_row_groups))
        if not file.metadata.num_rows == group_rows == record["rows"]:
            raise StoreError(
                f"{path}: row counts disagree (footer {file.metadata.num_rows}, row groups {group_rows}, "
                f"metadata field 'rows' {record['rows']}): the file is corrupt"
            )
        _check_expect(record, expect or {}, path)
    except BaseException:
        source.close()
        raise
    partition = Partition(path, file, record, layout, source.size())
    if expect_keys is not None:
        try:
            _check_keys(partition.keys, expect_keys, partition)
        except BaseException:
            partition.close()
            raise
    return partition


def _record(footer: pq.FileMetaData, path: str) -> dict[str, Any]:
    """The metadata record from the footer, checked against its sha256 and its JSON Schema."""
    kv = footer.metadata or {}
    raw, digest = kv.get(METADATA_KEY), kv.get(RECORD_SHA256_KEY)
    if raw is None:
        raise StoreError(f"{path}: no {METADATA_KEY.decode()!r} metadata: not a label partition")
    if digest is None or sha256_bytes(raw) != digest.decode(errors="replace"):
        raise StoreError(f"{path}: metadata {METADATA_KEY.decode()!r} does not match its sha256: the file is corrupt")
    record = json.loads(raw)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        got = record.get("format") if isinstance(record, dict) else None
        raise StoreError(f"{path}: metadata field 'format' is {got!r}, this reader reads {FORMAT!r}")
    problem = record_problem(record)
    if problem:
        raise StoreError(f"{path}: metadata field {problem}")
    return record


class _StoreErrors:
    """Context manager turning Arrow/OS read errors into StoreError naming the file."""

    def __init__(self, path: str, what: str = "corrupt column data"):
        self.path, self.what = path, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> None:
        if isinstance(error, FileNotFoundError):
            raise StoreError(f"{self.path}: no such partition") from error
        if isinstance(error, (pa.ArrowException, OSError)):
            raise StoreError(f"{self.path}: {self.what} ({error}); the store is a cache: rerun `mkd-pipeline run` "
                             "(it moves a damaged partition aside and recomputes it) or `mkd-pipeline labels verify "
                             "STORE --repair`") from error


def _check_expect(record: Mapping[str, Any], expect: Mapping[str, Any], path: str, prefix: str = "") -> None:
    for name, want in expect.items():
        where = f"{prefix}{name}"
        if name not in record:
            raise StoreError(f"{path}: metadata has no field {where!r} (expected {want!r})")
        got = record[name]
        if isinstance(want, Mapping) and isinstance(got, Mapping):
            _check_expect(got, want, path, f"{where}.")
        elif got != want:
            raise StoreError(
                f"{path}: metadata field {where!r} is {got!r}, expected {want!r}: the partition was written for other inputs"
            )


def _check_keys(keys: list[str], expected: Sequence[str], partition: Partition) -> None:
    expected = list(expected)
    if keys == expected:
        return
    shard = partition.metadata["shard"]
    if len(keys) != len(expected) or set(keys) != set(expected):
        missing, extra = len(set(expected) - set(keys)), len(set(keys) - set(expected))
        raise StoreError(
            f"{partition.path}: keys do not match shard {shard!r}: {len(keys)} rows, shard has {len(expected)} "
            f"({missing} keys missing, {extra} not in the shard)"
        )
    row = next(i for i, (a, b) in enumerate(zip(keys, expected)) if a != b)
    raise StoreError(
        f"{partition.path}: rows are in the wrong order for shard {shard!r}: row {row} is {keys[row]!r}, "
        f"the shard has {expected[row]!r} there"
    )


def _matrix(array: pa.FixedSizeListArray) -> np.ndarray:
    """fixed_size_list<W> -> numpy [N, W] (zero-copy view of the Arrow buffer)."""
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), array.type.list_size)


def _numpy(array: pa.Array) -> np.ndarray:
    if pa.types.is_fixed_size_list(array.type):
        return _matrix(array)
    return array.to_numpy(zero_copy_only=False)


def _float32(half: np.ndarray) -> torch.Tensor:
    """float16 numpy (read-only Arrow view) -> new float32 tensor.

    torch converts ~2x faster than numpy but will not wrap read-only memory, so copy the
    (half-size) float16 first.
    """
    return torch.from_numpy(half.copy()).float()
