"""Write one label partition atomically (docs/design.md §5, §6).

The file is encoded in memory, hashed, then published in one step: on a local filesystem with
:func:`pipeline._atomic.write_atomic` (temp file in the same directory, fsync, rename, fsync of the
directory); on an object store uploaded under a unique ``.tmp-*`` key and published by a
server-side copy (:func:`pipeline.paths.write_bytes`). A write killed at any moment leaves either
nothing or a ``.tmp-*`` file, never a partial file under the final name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from maskedkd.targets import SoftTarget, as_target
from pipeline._fingerprint import canonical_json, sha256_bytes
from pipeline._version import __version__
from pipeline.errors import OutputError, StoreError
from pipeline.labels import paths
from pipeline.labels.schema import (
    FORMAT,
    LABEL_COLUMNS,
    LSE_PREFIX,
    METADATA_KEY,
    RECORD_SHA256_KEY,
    Layout,
    index_type,
    label_fields,
    lse_column,
    pack_keep,
    record_problem,
)
from pipeline.paths import write_bytes

# One row group per file unless its Arrow data is larger than this (then equal-sized groups).
ROW_GROUP_BYTES = 256 << 20
ZSTD_LEVEL = 3
# float16 can hold log-probabilities down to this; anything lower is probability ~0 anyway.
_FLOAT16_MIN = -65504.0
_VIEW_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class WriteResult:
    """What the run lock records about a written partition."""

    path: str
    sha256: str
    rows: int
    bytes: int


def write_partition(
    path: str,
    *,
    keys: Sequence[str] | pa.Array,
    labels: Any,
    keep: Any,
    target: SoftTarget | torch.Tensor | np.ndarray,
    metadata: Mapping[str, Any],
    view_columns: Mapping[str, np.ndarray | pa.Array] | None = None,
    num_classes: int | None = None,
    extra_lse: Mapping[float, Any] | None = None,
    exclusive: bool = False,
) -> WriteResult:
    """Write a label partition to ``path`` (local path or ``pyarrow.fs`` URI), atomically.

    Args:
        path: usually :func:`pipeline.labels.partition_path`; parent directories are created.
        keys: the sample keys in the shard's tar order (unique).
        labels: int [N] ground-truth classes.
        keep: bool [N, P] (numpy or torch): the patches the teacher saw.
        target: a top-K :class:`maskedkd.SoftTarget` at tau = 1 (see :func:`maskedkd.from_logits`),
            or a dense one, or the full logits [N, C] (tensor or array), for ``topk: all``.
        metadata: the fingerprint record: ``shard``, ``view_epoch``, ``fingerprints``, ``counters``
            (``rows_computed + rows_reused`` must equal N), optional ``specs`` and
            ``package_version``; see ``manifests/label-partition.schema.json``. The writer adds
            ``format``, ``rows`` and ``layout``.
        view_columns: the View's columns, name -> numpy [N] or [N, W] or a pyarrow array of
            length N; stored as is (2-D as fixed_size_list) and given back by the reader.
        num_classes: the teacher's class count; required with a top-K target (it sets the
            index type: uint16 up to 65,536 classes, int32 above).
        extra_lse: ``{tau: logsumexp(logits / tau) [N]}`` for other temperatures
            (:func:`maskedkd.logsumexp_at`); top-K targets only.
        exclusive: publish only if ``path`` does not exist yet, else raise :class:`FileExistsError`
            and keep the existing file (concurrent writers: first wins; on an object store checked
            just before publishing, see :func:`pipeline.paths.write_bytes`).

    Returns:
        :class:`WriteResult` with the file's sha256, row count and size in bytes.

    Raises:
        ValueError: inconsistent or non-finite inputs, or an invalid metadata record.
        StoreError: the file cannot be written (disk full, permissions, ...); nothing is left
            under ``path``.
    """
    table = build_table(
        keys=keys, labels=labels, keep=keep, target=target, metadata=metadata,
        view_columns=view_columns or {}, num_classes=num_classes, extra_lse=extra_lse or {}, path=path,
    )
    data = encode(table)
    try:
        write_bytes(path, memoryview(data), exclusive=exclusive)
    except FileExistsError:
        raise
    except (OSError, OutputError) as e:
        raise StoreError(f"{path}: cannot write the partition ({e.__cause__ or e})") from e
    return WriteResult(path=path, sha256=sha256_bytes(data), rows=table.num_rows, bytes=data.size)


def build_table(
    *,
    keys: Sequence[str] | pa.Array,
    labels: Any,
    keep: Any,
    target: SoftTarget | torch.Tensor | np.ndarray,
    metadata: Mapping[str, Any],
    view_columns: Mapping[str, np.ndarray | pa.Array],
    num_classes: int | None,
    extra_lse: Mapping[float, Any],
    path: str = "<partition>",
) -> pa.Table:
    """The partition as an Arrow table with its metadata record (see :func:`write_partition`)."""
    key_array = keys if isinstance(keys, pa.Array) else pa.array(list(keys), pa.string())
    n = len(key_array)
    if key_array.null_count or pc.count_distinct(key_array).as_py() != n:
        raise ValueError(f"{path}: keys must be unique and not null")
    label_array = _rows(labels, n, "labels").astype(np.int32)
    keep_np = _rows(keep, n, "keep", ndim=2)
    if keep_np.dtype != bool:
        raise ValueError(f"{path}: keep must be a bool array [N, P], got {keep_np.dtype}")

    target = as_target(target)
    if not target.dense:
        if num_classes is None:
            raise ValueError(f"{path}: num_classes is required with a top-K target")
        columns = _topk_columns(target, n, num_classes, extra_lse, path)
        topk = columns["topk_idx"].type.list_size
    else:
        if extra_lse:
            raise ValueError(f"{path}: extra_lse needs a top-K target (full logits need no logsumexp)")
        logits = _rows(target.logit, n, "target logits", ndim=2)
        if num_classes not in (None, logits.shape[1]):
            raise ValueError(f"{path}: num_classes={num_classes} but the logits have {logits.shape[1]} classes")
        num_classes, topk = logits.shape[1], "all"
        log_p = torch.log_softmax(torch.from_numpy(logits).float(), dim=1).numpy()
        columns = {"logits": _fixed_list(_finite(log_p, "target logits", path))}
    layout = Layout(
        topk=topk, num_classes=num_classes, num_patches=keep_np.shape[1],
        lse_taus=tuple(sorted(map(float, extra_lse))), view_columns=tuple(view_columns),
    )

    packed = pack_keep(keep_np)
    keep_array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(packed.shape[1]), n, [None, pa.py_buffer(packed)])
    arrays = {"key": key_array, "label": pa.array(label_array, pa.int32())}
    arrays.update(_view_arrays(view_columns, n, path))
    arrays["keep"] = keep_array
    arrays.update(columns)

    record = {**metadata, "format": FORMAT, "rows": n, "layout": layout.to_json()}
    record.setdefault("package_version", __version__)
    problem = record_problem(record)
    if problem:
        raise ValueError(f"{path}: metadata {problem}")
    counters = record["counters"]
    if counters["rows_computed"] + counters["rows_reused"] != n:
        raise ValueError(f"{path}: metadata counters.rows_computed + rows_reused must equal the {n} rows")

    fields = [pa.field("key", pa.string(), nullable=False), pa.field("label", pa.int32(), nullable=False)]
    fields += [pa.field(name, arrays[name].type) for name in view_columns]
    fields += label_fields(layout)
    schema = pa.schema(fields, metadata={METADATA_KEY: canonical_json(record)})
    return pa.Table.from_arrays([arrays[f.name] for f in fields], schema=schema)


def encode(table: pa.Table) -> pa.Buffer:
    """The Parquet bytes of a partition table (as made by :func:`build_table`).

    The metadata record and its sha256 go into the footer's key-value metadata. zstd
    everywhere; page checksums so a flipped byte in column data fails the read; no statistics
    (nothing filters on them, and they are bytes a flip could corrupt silently).
    Per column: dictionary where values repeat (label, class indices, integer/bool view
    columns), byte-stream-split for float32/float64 (separates the predictable sign/exponent
    bytes from the noisy mantissa bytes, ~25% smaller under zstd), plain for float16, delta
    strings for keys (shared prefixes). Every encoding here is one that pyarrow, pandas, DuckDB
    and Polars all decode: DuckDB rejects byte-stream-split on float16 (FIXED_LEN_BYTE_ARRAY),
    which costs ~3.5 bytes/row on top-10 log-probs (BENCHMARKS.md, bench store).
    """
    dictionary, encoding = [], {"key": "DELTA_BYTE_ARRAY"}
    for field in table.schema:
        if field.name == "key":
            continue
        leaf = field.type.value_type if pa.types.is_fixed_size_list(field.type) else field.type
        column = f"{field.name}.list.element" if pa.types.is_fixed_size_list(field.type) else field.name
        if pa.types.is_integer(leaf) or pa.types.is_boolean(leaf):
            dictionary.append(column)
        elif pa.types.is_floating(leaf) and not pa.types.is_float16(leaf):
            encoding[column] = "BYTE_STREAM_SPLIT"
        elif pa.types.is_floating(leaf):
            encoding[column] = "PLAIN"
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    groups = -(-table.num_rows * row_bytes // ROW_GROUP_BYTES) or 1
    # The record goes into the footer's key-value metadata only: left in the Arrow schema it
    # would also be stored (base64) inside ARROW:schema, a second copy a flipped byte could alter.
    record = table.schema.metadata[METADATA_KEY]
    table = table.replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(
        sink,
        table.schema,
        compression="zstd",
        compression_level=ZSTD_LEVEL,
        use_dictionary=dictionary,
        column_encoding=encoding,
        write_statistics=False,
        write_page_checksum=True,
    ) as writer:
        writer.write_table(table, row_group_size=max(1, -(-table.num_rows // groups)))
        writer.add_key_value_metadata({METADATA_KEY: record, RECORD_SHA256_KEY: sha256_bytes(record).encode()})
    return sink.getvalue()


def _topk_columns(
    target: SoftTarget, n: int, num_classes: int, extra_lse: Mapping[float, Any], path: str
) -> dict[str, pa.Array]:
    if abs(float(target.tau) - 1.0) > 1e-9:
        raise ValueError(f"{path}: top-K target must hold the logsumexp at tau=1, got tau={target.tau}")
    idx = _rows(target.idx, n, "target.idx", ndim=2)
    logit = _rows(target.logit, n, "target.logit", ndim=2).astype(np.float32)
    lse = _finite(_rows(target.lse, n, "target.lse").astype(np.float32), "target.lse", path)
    if idx.shape != logit.shape:
        raise ValueError(f"{path}: target.idx {idx.shape} and target.logit {logit.shape} differ in shape")
    if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(f"{path}: target.idx has classes outside 0..{num_classes - 1}")
    # Stored relative to lse (log-probabilities): float16 is ~1000x finer near 0 than near 20,
    # so the top classes' probabilities and the tail bucket survive the rounding.
    log_p = _finite(logit - lse[:, None], "target.logit", path)
    columns = {
        "topk_idx": _fixed_list(idx.astype(index_type(num_classes).to_pandas_dtype())),
        "topk_logit": _fixed_list(log_p),
        "lse": pa.array(lse, pa.float32()),
    }
    for tau, value in extra_lse.items():
        if float(tau) == 1.0:
            raise ValueError(f"{path}: extra_lse at tau=1 duplicates target.lse")
        value = _finite(_rows(value, n, f"extra_lse[{tau}]").astype(np.float32), f"extra_lse[{tau}]", path)
        columns[lse_column(tau)] = pa.array(value, pa.float32())
    return columns


def _rows(x: Any, n: int, name: str, ndim: int = 1) -> np.ndarray:
    """``x`` as a numpy array with ``n`` rows and ``ndim`` dimensions, or ValueError naming it."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.dtype == torch.bfloat16 else x  # numpy has no bfloat16 (autocast output)
    a = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != ndim or a.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}{', ...' if ndim == 2 else ''}], got {list(a.shape)}")
    return a


def _finite(x: Any, name: str, path: str) -> np.ndarray:
    a = x.numpy() if isinstance(x, torch.Tensor) else x
    if not np.isfinite(a).all():
        row = int(np.argwhere(~np.isfinite(a))[0][0])
        raise ValueError(f"{path}: {name} is not finite (first at row {row}); the teacher output is broken")
    return a


def _fixed_list(a: np.ndarray) -> pa.FixedSizeListArray:
    """[N, W] numpy -> fixed_size_list<W>; float arrays are stored as float16."""
    if a.dtype.kind == "f":  # torch converts to float16 ~2x faster than numpy
        a = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).clamp(min=_FLOAT16_MIN).half().numpy()
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).reshape(-1)), a.shape[1])


def _view_arrays(view_columns: Mapping[str, np.ndarray | pa.Array], n: int, path: str) -> dict[str, pa.Array]:
    out = {}
    for name, value in view_columns.items():
        if not _VIEW_NAME.match(name) or name in LABEL_COLUMNS + paths.HIVE_KEYS or name.startswith(LSE_PREFIX):
            raise ValueError(f"{path}: view column name {name!r} is reserved or not an identifier")
        if isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        if not isinstance(value, pa.Array):
            a = np.asarray(value)
            if a.ndim == 2:
                value = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).reshape(-1)), a.shape[1])
            elif a.ndim == 1:
                value = pa.array(a.tolist() if a.dtype.kind in "OU" else a)
            else:
                raise ValueError(f"{path}: view column {name!r} must be 1-D or 2-D, got shape {list(a.shape)}")
        if len(value) != n:
            raise ValueError(f"{path}: view column {name!r} has {len(value)} rows, expected {n}")
        out[name] = value
    return out

