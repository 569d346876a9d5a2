"""What `labels inspect` shows of a partition: layout, metadata, size, and label statistics."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.labels.reader import Partition, open_partition


def summarize(path: str) -> dict[str, Any]:
    """Schema, metadata, rows, bytes per row and label statistics of one partition.

    The statistics stream the whole file: ``teacher_top1_agreement`` (teacher's arg-max equals
    ``label``), ``mean_kept_fraction`` (of the patch grid) and ``mean_topk_mass`` (teacher
    probability held by the K stored classes; None with ``topk: all``).
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
            "mean_kept_fraction": kept / (denominator * partition.layout.num_patches),
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
