"""The label store: Parquet partitions of teacher soft labels (docs/design.md §5).

One file per (shard, view epoch, mask spec), rows in the shard's tar order, at a path derived
from the inputs' fingerprints. Write with :func:`write_partition` (atomic), read with
:func:`open_partition` (checked, streamed as torch tensors).
"""

from pipeline.labels.paths import list_partitions, partition_path, related_partitions
from pipeline.labels.reader import LabelBatch, Partition, open_partition
from pipeline.labels.writer import WriteResult, write_partition

__all__ = [
    "LabelBatch",
    "Partition",
    "WriteResult",
    "list_partitions",
    "open_partition",
    "partition_path",
    "related_partitions",
    "write_partition",
]
