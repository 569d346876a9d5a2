"""The student trainer: streams shards and label partitions in lockstep (docs/design.md §6).

Entry points: :func:`train_segment` (one curriculum segment, resumable, DDP under ``torchrun``;
its recipe is the validated :class:`pipeline.config.TrainConfig`), :func:`evaluate` (top-1 on
the un-augmented view). ``train_segment`` streams a run's views and labels through the public
dataset :class:`pipeline.train.labeled_views.LabeledViews` (``from pipeline import LabeledViews``).
Which rows of which shards a run uses, and the other rules precompute must follow to label
exactly them, are in :mod:`pipeline.labels.contract`.
"""

from pipeline.train.evaluate import evaluate
from pipeline.train.loop import OnlineTeacher, train_segment

__all__ = [
    "OnlineTeacher",
    "evaluate",
    "train_segment",
]
