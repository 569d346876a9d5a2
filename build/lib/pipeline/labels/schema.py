"""The label partition's Arrow schema, its metadata record, and the keep bitset (docs/design.md §5).

The record format is documented as a JSON Schema in ``pipeline/schemas/label-partition.schema.json``;
this module builds the Arrow schema a record's ``layout`` implies and checks a file against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from pipeline._schemas import json_problem
from pipeline.errors import StoreError

FORMAT = "mkd-label-partition/1"
# Footer key-value metadata: the record (canonical JSON) and its sha256, so a flipped byte in
# the record is caught even where the result is still valid JSON.
METADATA_KEY = b"mkd.partition"
RECORD_SHA256_KEY = b"mkd.partition.sha256"

# Columns the store owns; a view column may not take one of these names.
LABEL_COLUMNS = ("key", "label", "keep", "topk_idx", "topk_logit", "lse", "logits")
LSE_PREFIX = "lse_tau"
# Largest class count whose indices fit uint16 (indices 0..65535).
UINT16_CLASSES = 65536


@dataclass(frozen=True)
class Layout:
    """What a partition holds, as recorded in its metadata ``layout``.

    Attributes:
        topk: K, or ``"all"`` when the full logits are stored.
        num_classes: the teacher's class count.
        num_patches: the teacher's patch grid size (bits in ``keep``).
        lse_taus: extra temperatures with an ``lse_tau<T>`` column.
        view_columns: names of the View's columns, in file order.
    """

    topk: int | str
    num_classes: int
    num_patches: int
    lse_taus: tuple[float, ...] = ()
    view_columns: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``layout`` object of the metadata record."""
        return {
            "topk": self.topk,
            "num_classes": self.num_classes,
            "num_patches": self.num_patches,
            "lse_taus": list(self.lse_taus),
            "view_columns": list(self.view_columns),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Layout":
        """Inverse of :meth:`to_json`."""
        return cls(
            topk=obj["topk"],
            num_classes=int(obj["num_classes"]),
            num_patches=int(obj["num_patches"]),
            lse_taus=tuple(float(t) for t in obj["lse_taus"]),
            view_columns=tuple(obj["view_columns"]),
        )


def lse_column(tau: float) -> str:
    """Name of the logsumexp column at temperature ``tau`` (``lse`` at 1, else ``lse_tau<T>``)."""
    return "lse" if float(tau) == 1.0 else f"{LSE_PREFIX}{float(tau):g}"


def index_type(num_classes: int) -> pa.DataType:
    """Arrow type of class indices: uint16 up to 65,536 classes, int32 above."""
    return pa.uint16() if num_classes <= UINT16_CLASSES else pa.int32()


def keep_width(num_patches: int) -> int:
    """Bytes in the ``keep`` bitset of a grid of ``num_patches`` patches."""
    return (num_patches + 7) // 8


def label_fields(layout: Layout) -> list[pa.Field]:
    """The store's own columns (all but ``key``, ``label`` and the view columns), in file order."""
    fields = [pa.field("keep", pa.binary(keep_width(layout.num_patches)), nullable=False)]
    if layout.topk == "all":
        fields.append(pa.field("logits", pa.list_(pa.float16(), layout.num_classes), nullable=False))
    else:
        fields += [
            pa.field("topk_idx", pa.list_(index_type(layout.num_classes), int(layout.topk)), nullable=False),
            pa.field("topk_logit", pa.list_(pa.float16(), int(layout.topk)), nullable=False),
            pa.field("lse", pa.float32(), nullable=False),
        ]
        fields += [pa.field(lse_column(t), pa.float32(), nullable=False) for t in layout.lse_taus]
    return fields


def check_schema(schema: pa.Schema, layout: Layout, path: str) -> None:
    """Raise :class:`StoreError` naming ``path`` and the column unless ``schema`` fits ``layout``."""
    expected = [pa.field("key", pa.string()), pa.field("label", pa.int32())] + label_fields(layout)
    for field in expected:
        if field.name not in schema.names:
            raise StoreError(f"{path}: column {field.name!r} is missing (the layout in its metadata needs it)")
        got = schema.field(field.name).type
        if got != field.type:
            raise StoreError(f"{path}: column {field.name!r} has type {got}, expected {field.type}")
    known = {f.name for f in expected} | set(layout.view_columns)
    for name in layout.view_columns:
        if name not in schema.names:
            raise StoreError(f"{path}: view column {name!r} named in its metadata is missing")
    extra = [n for n in schema.names if n not in known]
    if extra:
        raise StoreError(f"{path}: unexpected column(s) {extra} (not in the layout in its metadata)")


def pack_keep(keep: np.ndarray) -> np.ndarray:
    """Pack a bool array [N, P] into the ``keep`` bitset bytes, uint8 [N, ceil(P/8)]."""
    return np.packbits(np.asarray(keep, dtype=bool), axis=1, bitorder="little")


def unpack_keep(packed: np.ndarray, num_patches: int) -> np.ndarray:
    """Inverse of :func:`pack_keep`: uint8 [N, ceil(P/8)] -> bool [N, P]."""
    return np.unpackbits(packed, axis=1, count=num_patches, bitorder="little").view(bool)


def record_problem(record: Mapping[str, Any]) -> str | None:
    """Why ``record`` is not a valid partition metadata record, or None if it is."""
    return json_problem("label-partition", dict(record))
