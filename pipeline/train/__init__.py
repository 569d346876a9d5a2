"""The student trainer: streams shards and label partitions in lockstep (docs/design.md §6).

Entry points: :func:`train_segment` (one curriculum segment, resumable, DDP under ``torchrun``),
:func:`evaluate` (top-1 on the un-augmented view), :func:`shard_refs` / :func:`subset_rows`
(which rows of which shards a run uses: precompute labels exactly these).
"""

from pipeline.train.config import LabelRef, OnlineTeacher, RenderConfig, ShardRef, TrainConfig
from pipeline.train.evaluate import evaluate
from pipeline.train.loop import train_segment
from pipeline.train.stream import shard_refs, store_view_columns, subset_rows, view_epoch_of

__all__ = [
    "LabelRef",
    "OnlineTeacher",
    "RenderConfig",
    "ShardRef",
    "TrainConfig",
    "evaluate",
    "shard_refs",
    "store_view_columns",
    "subset_rows",
    "train_segment",
    "view_epoch_of",
]
