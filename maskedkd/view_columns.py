"""A view's storage columns, declared once: name, :class:`~maskedkd.views.View` field, type, default.

:data:`VIEW_COLUMNS` is the one list of the columns. Everything else derives from it: the View's
field defaults, its row (:meth:`View.to_columns <maskedkd.views.View.to_columns>` and back), the
column arrays of many views (:func:`maskedkd.views.views_to_columns` and back) and their layout
(:func:`maskedkd.views.view_columns_layout`). A columnar store keeps each column as the type of
the same name (``str``: a string), a fixed-size list of ``width`` of it where ``width`` is not 0;
the label store's Arrow schema is pinned to this table by a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

NO_BOX = (0.0, 0.0, 0.0, 0.0)  # an erase or cutmix box that is not there
RA_LAYERS = -1  # a column width: one entry per RandAugment layer of the spec


def float32_exact(x: float) -> float:
    """Round to the nearest float32, so a view survives float32 columns unchanged."""
    return float(np.float32(x))


_FROM_CELL: dict[str, Callable[[Any], Any]] = {
    "str": str, "bool": bool, "float32": float32_exact, "int8": int, "int16": int, "int32": int, "int64": int,
}


@dataclass(frozen=True)
class ViewColumn:
    """One storage column of a view.

    Attributes:
        name: the column's name in a store.
        field: the :class:`~maskedkd.views.View` field it holds.
        dtype: numpy dtype name of its values; ``"str"`` for strings (object arrays).
        width: 0 for a scalar, else the fixed list width; :data:`RA_LAYERS` for one entry per
            RandAugment layer (``ViewSpec.ra_layers``).
        default: the field's value when the spec leaves that part off; None for the fields every
            view is drawn with (key, epoch, seed).
    """

    name: str
    field: str
    dtype: str
    width: int = 0
    default: Any = None

    def width_for(self, ra_layers: int) -> int:
        """The list width for views with ``ra_layers`` RandAugment layers (0 = scalar)."""
        return ra_layers if self.width == RA_LAYERS else self.width

    def to_cell(self, value: Any) -> Any:
        """A field value as a plain scalar or list."""
        return list(value) if self.width else value

    def from_cell(self, cell: Any) -> Any:
        """Inverse of :meth:`to_cell`; also takes numpy scalars and arrays."""
        convert = _FROM_CELL[self.dtype]
        return tuple(convert(v) for v in cell) if self.width else convert(cell)


VIEW_COLUMNS: tuple[ViewColumn, ...] = (
    ViewColumn("key", "key", "str"),
    ViewColumn("view_epoch", "epoch", "int32"),
    ViewColumn("view_seed", "seed", "int64"),
    ViewColumn("view_crop", "crop", "float32", 4, (1.0, 0.0, 0.5, 0.5)),
    ViewColumn("view_shift", "shift", "int16", 2, (0, 0)),
    ViewColumn("view_flip", "flip", "bool", 0, False),
    ViewColumn("view_ra_op", "ra_op", "int8", RA_LAYERS, ()),
    ViewColumn("view_ra_mag", "ra_mag", "float32", RA_LAYERS, ()),
    ViewColumn("view_erase", "erase", "float32", 4, NO_BOX),
    ViewColumn("view_erase_fill", "erase_fill", "int8", 0, 0),
    ViewColumn("view_partner", "partner", "str", 0, ""),
    ViewColumn("view_lam", "lam", "float32", 0, 1.0),
    ViewColumn("view_mix_box", "mix_box", "float32", 4, NO_BOX),
)
# field -> default, for the fields that have one
FIELD_DEFAULTS: dict[str, Any] = {c.field: c.default for c in VIEW_COLUMNS if c.default is not None}


def columns_layout(ra_layers: int) -> dict[str, tuple[str, int]]:
    """Column name -> (numpy dtype name, list width; 0 = scalar) for views with ``ra_layers`` layers."""
    return {c.name: (c.dtype, c.width_for(ra_layers)) for c in VIEW_COLUMNS}


def to_row(view: Any) -> dict[str, Any]:
    """Column name -> plain cell of one view (any object with the View's fields)."""
    return {c.name: c.to_cell(getattr(view, c.field)) for c in VIEW_COLUMNS}


def from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The View's fields (constructor keywords) from one row of cells."""
    return {c.field: c.from_cell(row[c.name]) for c in VIEW_COLUMNS}


def to_arrays(rows: Sequence[Mapping[str, Any]], ra_layers: int) -> dict[str, np.ndarray]:
    """Column arrays of many rows: strings as object arrays, lists as 2-D ``[N, width]`` arrays."""
    out: dict[str, np.ndarray] = {}
    for name, (dtype, w) in columns_layout(ra_layers).items():
        values = [r[name] for r in rows]
        arr: np.ndarray
        if dtype == "str":
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
        elif w:
            arr = np.asarray(values, dtype=dtype).reshape(len(values), w)
        else:
            arr = np.asarray(values, dtype=dtype)
        out[name] = arr
    return out
