"""What `labels inspect` shows of a partition: layout, metadata, size, and label statistics."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.labels.contract import stored_mask
from pipeline.labels.reader import Partition, open_partition


def summarize(path: str) -> dict[str, Any]:
    """Schema, metadata, rows, bytes per row and label statistics of one partition.

    The statistics stream the whole file: ``teacher_top1_agreement`` (teacher's arg-max equals
    ``label``), ``mean_kept_fraction`` (of the patch grid) and ``mean_topk_mass`` (teacher
    probability held by the K stored classes; None with ``topk: all``).

    A forward policy below all patches (``lowres``, ``tome``) keeps no patch set: the teacher saw
    the whole view and its forward was cut to the cost of ``keep`` patches, and its rows store an
    empty ``keep`` column. Its ``mean_kept_fraction`` is None (not 0, which would say the teacher
    saw nothing), and ``forward_policy`` names the policy, its keep and ``keep / num_patches``
    (the budget, not patches seen); ``forward_policy`` is None for keep sets.
    """
    with open_partition(path) as partition:
        rows, agree, kept, mass = partition.num_rows, 0, 0.0, 0.0
        for batch in partition.iter_batches(65536, columns=("label", "keep", "target")):
            target = batch.target
            assert target is not None and batch.label is not None and batch.keep is not None  # the columns asked for
            # the K stored classes' mass (1 per row with topk: all, reported as None below)
            mass += target.log_probs(target.tau)[0].exp().sum(dim=1, dtype=torch.float64).sum().item()
            agree += int((target.top_class() == batch.label).sum())
            kept += batch.keep.sum(dtype=torch.float64).item()
        column_bytes = column_bytes_per_row(partition)
        schema = partition.schema
        denominator = max(rows, 1)
        num_patches = partition.layout.num_patches
        forward = stored_mask(partition.metadata)
        return {
            "path": path,
            "rows": rows,
            "bytes": partition.num_bytes,
            "bytes_per_row": partition.num_bytes / denominator,
            "row_groups": partition.file_metadata.num_row_groups,
            "columns": [
                {"name": f.name, "type": str(f.type), "bytes_per_row": column_bytes.get(f.name, 0.0)}
                for f in schema
            ],
            "metadata": partition.metadata,
            "teacher_top1_agreement": agree / denominator,
            "mean_kept_fraction": None if forward is not None else kept / (denominator * num_patches),
            "forward_policy": None if forward is None else
            {"policy": forward[0], "keep": forward[1], "keep_fraction": forward[1] / num_patches},
            "mean_topk_mass": None if partition.layout.topk == "all" else mass / denominator,
        }


def column_bytes_per_row(partition: Partition) -> dict[str, float]:
    """Compressed bytes on disk per row, per top-level column (all row groups)."""
    meta, rows = partition.file_metadata, max(partition.num_rows, 1)
    out: dict[str, float] = {}
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(g).column(c)
            name = chunk.path_in_schema.split(".")[0]
            out[name] = out.get(name, 0.0) + chunk.total_compressed_size / rows
    return out
