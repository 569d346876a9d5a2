"""The view column table: one row per View field, in order, holding the View's defaults."""

from __future__ import annotations

import dataclasses

import numpy as np

from maskedkd.view_columns import FIELD_DEFAULTS, RA_LAYERS, VIEW_COLUMNS, columns_layout
from maskedkd.views import View, view_columns_layout
from tests.maskedkd.helpers import FULL


def test_the_table_has_one_column_per_view_field_in_order():
    assert [c.field for c in VIEW_COLUMNS] == [f.name for f in dataclasses.fields(View)]
    assert len({c.name for c in VIEW_COLUMNS}) == len(VIEW_COLUMNS)
    assert all(c.dtype == "str" or np.dtype(c.dtype) for c in VIEW_COLUMNS)


def test_view_defaults_are_the_tables():
    plain = View("k", 0, 1)
    for column in VIEW_COLUMNS[3:]:
        assert getattr(plain, column.field) == column.default, column.name
    assert set(FIELD_DEFAULTS) == {c.field for c in VIEW_COLUMNS[3:]}
    assert plain.to_columns()["view_lam"] == 1.0 and plain.to_columns()["view_mix_box"] == [0.0] * 4


def test_layout_sizes_randaugment_columns_by_the_spec():
    layout = view_columns_layout(FULL)
    assert layout == columns_layout(2) and list(layout) == [c.name for c in VIEW_COLUMNS]
    ra = {c.name for c in VIEW_COLUMNS if c.width == RA_LAYERS}
    assert ra == {"view_ra_op", "view_ra_mag"}
    assert all(layout[n][1] == 2 for n in ra) and all(columns_layout(0)[n][1] == 0 for n in ra)
