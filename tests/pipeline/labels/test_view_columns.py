"""The view columns a label partition stores: the Arrow schema follows maskedkd's column table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from maskedkd import from_logits
from maskedkd.view_columns import VIEW_COLUMNS
from maskedkd.views import ViewSpec, shard_views, views_from_columns
from pipeline.labels import write_partition
from pipeline.labels.contract import store_view_columns
from tests.pipeline.labels.helpers import partition_metadata, teacher_outputs

N, C, P = 40, 10, 16
# the view columns' types in the Parquet file as the store wrote them before the column table
# existed (RandAugment with 2 layers; Parquet names a list's items 'element'): a change here
# changes the bytes of every partition
WRITTEN = {
    "view_epoch": "int32",
    "view_seed": "int64",
    "view_crop": "fixed_size_list<element: float>[4]",
    "view_shift": "fixed_size_list<element: int16>[2]",
    "view_flip": "bool",
    "view_ra_op": "fixed_size_list<element: int8>[2]",
    "view_ra_mag": "fixed_size_list<element: float>[2]",
    "view_erase": "fixed_size_list<element: float>[4]",
    "view_erase_fill": "int8",
    "view_partner": "string",
    "view_lam": "float",
    "view_mix_box": "fixed_size_list<element: float>[4]",
}


def _arrow_type(dtype: str, width: int) -> tuple[pa.DataType, int]:
    """The Arrow type a column of the table is stored as (the same type; a fixed-size list of
    ``width`` where wide), as (value type, list width)."""
    return (pa.string() if dtype == "str" else pa.from_numpy_dtype(np.dtype(dtype))), width


def _stored_type(t: pa.DataType) -> tuple[pa.DataType, int]:
    return (t.value_type, t.list_size) if pa.types.is_fixed_size_list(t) else (t, 0)


def _write(tmp_path, spec: ViewSpec) -> tuple[pa.Schema, pa.Table, list]:
    data = teacher_outputs(N, C, P, seed=1)
    views = shard_views(spec, 5, 0, data["keys"])
    path = str(tmp_path / "part.parquet")
    write_partition(path, keys=data["keys"], labels=data["labels"], keep=data["keep"],
                    target=from_logits(torch.from_numpy(data["logits"]), 5), metadata=partition_metadata(N), num_classes=C,
                    view_columns=store_view_columns(views, spec))
    return pq.read_schema(path), pq.read_table(path), views


def test_the_store_writes_each_view_column_as_the_table_declares_it(tmp_path):
    spec = ViewSpec(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5, mixup=0.8, cutmix=1.0, mix_window=8)
    schema, table, views = _write(tmp_path, spec)
    stored = {f.name: str(f.type) for f in schema if f.name.startswith("view_")}
    assert stored == WRITTEN
    assert _stored_type(schema.field("key").type) == _arrow_type(VIEW_COLUMNS[0].dtype, 0)
    for column in VIEW_COLUMNS[1:]:  # key is the store's own column
        assert _stored_type(schema.field(column.name).type) == _arrow_type(column.dtype, column.width_for(spec.ra_layers)), column.name
    assert views_from_columns(table.to_pydict()) == views


@pytest.mark.parametrize("spec", [ViewSpec(), ViewSpec(scale=(0.6, 1.0), ratio=(0.75, 1.3333333))])
def test_without_randaugment_its_columns_are_left_out(tmp_path, spec):
    schema, _, _ = _write(tmp_path, spec)
    stored = {f.name: str(f.type) for f in schema if f.name.startswith("view_")}
    assert stored == {k: v for k, v in WRITTEN.items() if not k.startswith("view_ra_")}
